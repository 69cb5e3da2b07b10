"""Creating a run directory from a config file, and opening an existing one to resume it.

Creation validates everything before any work starts: the config (unknown keys, bad values), the
prompt file (every malformed line, by number), and the model names or folders. Relative paths in a
config are resolved against the directory of the config file, so a config means the same thing
whatever directory ``spar run`` is started from.
"""

from __future__ import annotations

import datetime as dt
import errno
import math
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import yaml
from pydantic import ValidationError

from shared.config import RunConfig, path_fields, walk_fields, with_fields
from shared.errors import ConfigError, StorageError
from shared.prompts import PromptRecord, parse_prompt_lines
from workers.artifacts import RunPaths, read_json, write_json_atomic, write_jsonl_atomic
from workers.models.registry import is_builtin


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid run configuration"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key (check the spelling; see examples/demo.yaml)")
        elif err["type"] == "missing":
            lines.append(f"  {where}: required field is missing")
        else:
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``KEY.PATH=VALUE`` settings on top of a parsed config (``spar run --set``); VALUE is YAML.

    Why: a sweep (learning rates, seeds) is one config file and a few command lines, not one file
    per point. Every key must name a mapping path; the result is validated like the file itself.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. train_actor.learning_rate=2e-5")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {exc}") from exc
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section of settings")
            node = child
        node[parts[-1]] = value
    return raw


def load_config_file(path: Path, overrides: list[str] | None = None) -> RunConfig:
    """Parse and validate a YAML run config (plus ``--set`` overrides), relative paths made absolute."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    raw = apply_overrides(raw, overrides or [])
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
    return resolve_paths(config, path.parent)


def resolve_paths(config: RunConfig, base: Path, check_files: bool = True) -> RunConfig:
    """Make every path field (:func:`shared.config.path_fields`) absolute, relative to ``base``.

    A model field holding a built-in name ('tiny', 'smollm2') is left as it is. ``check_files``:
    the init datasets must exist (the API checks only after confining them, so that a client cannot
    probe for files outside the data root).
    """

    def absolute(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    update = {
        where: absolute(value)
        for where, value, kind in path_fields(config)
        if not (kind == "model" and is_builtin(value))
    }
    resolved = with_fields(config, update)
    if check_files and resolved.init is not None:
        for key in ("actor_data", "refiner_data"):
            path = getattr(resolved.init, key)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"init.{key}: file {path} does not exist (relative to the config file)")
    return resolved


def read_prompts(config: RunConfig) -> list[PromptRecord]:
    """The prompt file's records; every malformed line (not UTF-8, not JSON, too deep) by number."""
    path = Path(config.prompts)
    if not path.is_file():
        raise ConfigError(f"prompts: file {path} does not exist (paths are relative to the config file)")
    with path.open("rb") as f:
        records = parse_prompt_lines(f, source=str(path))
    return records[: config.max_prompts] if config.max_prompts else records


def new_run_id(name: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def create_run(config: RunConfig, runs_dir: Path, run_id: str | None = None, source: str = "") -> RunPaths:
    """Write the run's config and prompt shards; refuses to reuse an existing run directory.

    Atomic: the run is built in a hidden temporary folder beside its final place and renamed into
    it, so a full or read-only disk leaves no half-created run behind (and the error says which).
    """
    prompts = read_prompts(config)
    if config.evaluation.validation_prompts is not None and "eval" in config.stages:
        from workers.stages.evaluate import validation_items

        validation_items(
            Path(config.evaluation.validation_prompts)
        )  # a wrong file fails now, not hours later
    final = RunPaths(runs_dir / (run_id or new_run_id(config.name)))
    if final.root.exists():
        raise ConfigError(f"run {final.root} exists already; resume it with --resume {final.root}")
    n_shards = math.ceil(len(prompts) / config.shard_size)
    building: Path | None = None
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".creating-{final.run_id}-", dir=runs_dir))
        paths = RunPaths(building)
        for k in range(n_shards):
            chunk = prompts[k * config.shard_size : (k + 1) * config.shard_size]
            write_jsonl_atomic(paths.prompt_shard(k), [p.as_record() for p in chunk])
        write_json_atomic(
            paths.config,
            {
                "config": config.model_dump(mode="json"),
                "source": source,
                "created_at": dt.datetime.now(dt.UTC).isoformat(),
                "prompts": len(prompts),
                "shards": n_shards,
            },
        )
        paths.note_change("created")
        os.chmod(building, 0o755)  # mkdtemp makes it private; run folders are shared like their files
        os.rename(building, final.root)  # fails (EEXIST/ENOTEMPTY) if the run appeared meanwhile
        building = None
    except OSError as exc:
        if final.root.exists() and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise ConfigError(
                f"run {final.root} exists already; resume it with --resume {final.root}"
            ) from exc
        raise StorageError(runs_dir, exc) from exc
    finally:
        if building is not None:
            shutil.rmtree(building, ignore_errors=True)
    return final


def open_run(run_dir: Path) -> RunPaths:
    paths = RunPaths(run_dir)
    if not paths.config.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json)")
    RunConfig.model_validate(read_json(paths.config)["config"])
    return paths


def confine(
    config: RunConfig, root: Path, *, allow_remote_code: bool = False, max_iterations: int | None = None
) -> RunConfig:
    """The server's rules for a config sent over the API (400 naming the field on any breach).

    * Every path field (marked with :func:`shared.config.path_field`, so fields added later are
      covered too), relative or absolute, must resolve -- through symlinks -- to a place inside the
      data root ``root``; relative ones are taken relative to it. Built-in model names pass.
    * ``trust_remote_code`` (hf and vllm sections of both roles) is refused unless the server was
      started with ``SPAR_ALLOW_REMOTE_CODE=1``: it runs Python shipped in a model folder.
    * ``iterations`` may not exceed the server's ``SPAR_MAX_ITERATIONS``.
    """
    root = root.resolve()
    for where, _, value in walk_fields(config):
        if where.endswith(".trust_remote_code") and value is True and not allow_remote_code:
            raise ConfigError(
                f"{where}: executing code shipped with a model is disabled on this server; "
                "set it to false (an operator may allow it with SPAR_ALLOW_REMOTE_CODE=1)"
            )
    if max_iterations is not None and config.iterations > max_iterations:
        raise ConfigError(
            f"iterations: {config.iterations} is over this server's limit of {max_iterations} "
            "(SPAR_MAX_ITERATIONS)"
        )
    for where, value, _ in path_fields(config):
        if "\x00" in value:
            raise ConfigError(f"{where}: a path may not contain a NUL character")
    resolved = resolve_paths(config, root, check_files=False)
    original = {where: value for where, value, _ in path_fields(config)}
    for where, value, kind in path_fields(resolved):
        if kind == "model" and value == original.get(where) and is_builtin(value):
            continue  # a built-in model name, not a path
        try:
            inside = Path(value).resolve().is_relative_to(root)
        except (OSError, ValueError, RuntimeError) as exc:  # too long, a symlink loop ...
            raise ConfigError(f"{where}: {original.get(where)!r} is not a usable path ({exc})") from exc
        if not inside:
            raise ConfigError(
                f"{where}: {original.get(where)} is outside the data root {root}; put the file under it"
            )
    return resolve_paths(resolved, root)  # absolute already: this checks the init files exist
