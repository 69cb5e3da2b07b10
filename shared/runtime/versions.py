"""Model versions: which checkpoint plays each role in each iteration.

Iteration t samples with the actor M_t and judges/refines with the refiner R_t, and its training
stages write M_{t+1} and R_{t+1}. Version 0 is the configured model, unless stage 0 (SFT
initialisation) wrote ``models/<role>/v0``. Every trained version lives in
``runs/<run_id>/models/<role>/v<k>/`` with a ``spar_version.json`` metadata file; the directory is
built under a temporary name and renamed, so a half-written checkpoint is never visible.

A version can be:
- a full Hugging Face folder (full fine-tuning),
- a LoRA adapter folder whose metadata names the base model folder it applies to,
- an alias (metadata only) of its parent, when a training stage had no data to learn from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.config import RunConfig
from shared.errors import RebuildMismatchError
from shared.records import VersionMetadata

from .artifacts import RunPaths, file_sha256, read_json, write_json_atomic

METADATA = "spar_version.json"


@dataclass(frozen=True)
class ModelVersion:
    """A role's model at one version, as an engine or a trainer needs to load it."""

    role: str
    version: str
    path: str
    adapter: str | None = None


BUILTIN_MODELS: tuple[str, ...] = ("smollm2", "tiny")
"""Model names a config may give instead of a folder; ``workers.models.registry`` prepares them."""


def is_builtin(spec: str) -> bool:
    """Whether a config's ``model`` names a built-in model rather than a folder."""
    return spec in BUILTIN_MODELS


def version_dir(paths: RunPaths, role: str, version: int) -> Path:
    return paths.root / "models" / role / f"v{version}"


def read_metadata(directory: Path) -> VersionMetadata | None:
    """The published version's metadata, or None when the version does not exist (yet)."""
    meta = directory / METADATA
    return VersionMetadata.from_record(read_json(meta)) if meta.exists() else None


def version_for(
    paths: RunPaths, config: RunConfig, role: str, iteration: int, cache_dir: Path | None = None
) -> ModelVersion:
    """The model ``role`` uses in ``iteration`` (i.e. version ``iteration``), resolved to folders.

    A role the run never trains (its ``train_<role>`` stage left out of ``stages``, e.g. the refiner
    of a run whose checker judges and whose pairs are sampled) plays v0 in every iteration.
    """
    directory = version_dir(paths, role, iteration)
    meta = read_metadata(directory)
    if meta is None:
        if iteration == 0:  # the configured model: a folder or a built-in name, resolved when loaded
            return ModelVersion(role, "v0", getattr(config, role).model)
        if not config.trains(role):
            return version_for(paths, config, role, 0, cache_dir)
        raise FileNotFoundError(
            f"{role} version v{iteration} does not exist in {paths.root}: run iteration {iteration - 1}'s "
            f"train_{role} stage first (or include it in `stages`)"
        )
    if meta.alias_of is not None:
        parent = version_for(paths, config, role, iteration - 1)
        return ModelVersion(role, f"v{iteration}", parent.path, parent.adapter)
    if meta.adapter:
        assert meta.base_model is not None, f"{directory}: an adapter version names its base_model"
        return ModelVersion(role, f"v{iteration}", meta.base_model, str(directory))
    return ModelVersion(role, f"v{iteration}", str(directory))


@contextmanager
def publishing(target: Path) -> Iterator[Path]:
    """A temporary directory next to ``target`` that becomes ``target`` atomically on success.

    On any error the temporary directory is removed and ``target`` stays absent.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        if target.exists():  # an earlier attempt published it: keep the first, identical by seed
            shutil.rmtree(tmp)
            return
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth")
"""Files that hold a version's weights (a full model or a LoRA adapter, sharded or not): what
``spar pack`` leaves out and what :func:`weights_digest` covers. Tokenizer and config files are
small and are rebuilt with the weights."""
NOT_WEIGHTS: frozenset[str] = frozenset({"training_args.bin"})
"""Files with a weight suffix that hold no weights: transformers pickles its TrainingArguments (with
this run's paths) beside the model, so a digest over it would differ between two identical models."""


def weight_files(folder: Path) -> list[Path]:
    """The weight files directly in ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name not in NOT_WEIGHTS
    )


def weights_digest(folder: Path) -> str | None:
    """One sha256 over the names and contents of ``folder``'s weight files; None without any.

    Recorded at publication, so a version retrained elsewhere can be compared with the original
    bit for bit (``check_rebuilt``): a float that differs anywhere changes it.
    """
    files = weight_files(folder)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def write_metadata(directory: Path, metadata: dict) -> None:
    """Validate ``metadata`` as :class:`VersionMetadata` (a wrong key fails here) and write it,
    with the digest of the weights already in ``directory`` (none for an alias)."""
    digest = weights_digest(directory)
    if digest is not None:
        metadata = metadata | {"weights_sha256": digest}
    write_json_atomic(directory / METADATA, VersionMetadata.model_validate(metadata).as_record())


def rebuild_record(paths: RunPaths, role: str, version: int) -> Path:
    """Where ``spar unpack`` leaves the digest a version it must rebuild has to match."""
    return paths.root / "rebuild" / f"{role}-v{version}.json"


def pending_rebuilds(paths: RunPaths) -> list[tuple[str, int]]:
    """(role, version) of each version ``spar unpack`` left to retrain that is not published yet
    (the records :func:`rebuild_record` names, read back)."""
    folder = rebuild_record(paths, "actor", 0).parent
    found = []
    for record in sorted(folder.glob("*-v*.json")) if folder.is_dir() else []:
        role, _, version = record.stem.rpartition("-v")
        if version.isdigit() and read_metadata(version_dir(paths, role, int(version))) is None:
            found.append((role, int(version)))
    return sorted(found)


def check_rebuilt(paths: RunPaths, role: str, version: int, folder: Path) -> None:
    """Refuse a rebuilt version whose weights differ from the packed run's (before it is published).

    Nothing to check when the version was never packed away. A mismatch means the training is not
    reproducible here (another CPU or GPU, precision, library release); the run's later stages were
    computed with the original weights, so continuing would mix two models under one name.
    """
    record = rebuild_record(paths, role, version)
    if not record.exists():
        return
    expected = str(read_json(record)["weights_sha256"])
    actual = weights_digest(folder)
    if actual != expected:
        raise RebuildMismatchError(
            f"{role} v{version} was retrained after `spar unpack`, but its weights differ from the packed "
            f"run's (sha256 {str(actual)[:16]}... here, {expected[:16]}... recorded): training does not "
            f"reproduce on this machine (another CPU, precision or library release?). The run's later "
            f"stages used the original, so it is not published; continue the run where it was packed, or "
            f"start a new run here"
        )


def latest_version(paths: RunPaths, role: str) -> int:
    """The highest published version of ``role`` in a run (0 when none was trained)."""
    k = 0
    while read_metadata(version_dir(paths, role, k + 1)) is not None:
        k += 1
    return k
