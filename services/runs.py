"""Creating a run directory from a config file, and opening an existing one to resume it.

Creation validates everything before any work starts: the config (unknown keys, bad values), the
prompt file (every malformed line, by number), and the model names or folders. Relative paths in a
config are resolved against the directory of the config file, so a config means the same thing
whatever directory ``spar run`` is started from.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
from pathlib import Path

import yaml
from pydantic import ValidationError

from shared.config import RunConfig
from shared.errors import ConfigError  # noqa: F401  (also importable from here)
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


def load_config_file(path: Path) -> RunConfig:
    """Parse and validate a YAML run config, with relative paths made absolute."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
    return resolve_paths(config, path.parent)


def resolve_paths(config: RunConfig, base: Path) -> RunConfig:
    """Make the prompt file and model folders absolute, relative to ``base``."""

    def absolute(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    update: dict[str, object] = {"prompts": absolute(config.prompts)}
    for role in ("actor", "refiner"):
        model = getattr(config, role)
        if not is_builtin(model.model):
            update[role] = model.model_copy(update={"model": absolute(model.model)})
    if config.init is not None:
        init_update = {
            key: absolute(getattr(config.init, key))
            for key in ("actor_data", "refiner_data")
            if getattr(config.init, key) is not None
        }
        for key, path in init_update.items():
            if not Path(path).is_file():
                raise ConfigError(f"init.{key}: file {path} does not exist (relative to the config file)")
        update["init"] = config.init.model_copy(update=init_update)
    return config.model_copy(update=update)


def read_prompts(config: RunConfig) -> list[PromptRecord]:
    path = Path(config.prompts)
    if not path.is_file():
        raise ConfigError(f"prompts: file {path} does not exist (paths are relative to the config file)")
    with path.open(encoding="utf-8") as f:
        records = parse_prompt_lines(f, source=str(path))
    return records[: config.max_prompts] if config.max_prompts else records


def new_run_id(name: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def create_run(config: RunConfig, runs_dir: Path, run_id: str | None = None, source: str = "") -> RunPaths:
    """Write the run's config and prompt shards; refuses to reuse an existing run directory."""
    prompts = read_prompts(config)
    paths = RunPaths(runs_dir / (run_id or new_run_id(config.name)))
    if paths.config.exists():
        raise ConfigError(f"run {paths.root} exists already; resume it with --resume {paths.root}")
    n_shards = math.ceil(len(prompts) / config.shard_size)
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
    return paths


def open_run(run_dir: Path) -> RunPaths:
    paths = RunPaths(run_dir)
    if not paths.config.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json)")
    RunConfig.model_validate(read_json(paths.config)["config"])
    return paths


def confine(config: RunConfig, root: Path) -> RunConfig:
    """Resolve the config's paths against the data root; anything outside it is refused (400)."""
    resolved = resolve_paths(config, root)
    paths = {"prompts": resolved.prompts}
    for role in ("actor", "refiner"):
        model = getattr(resolved, role).model
        if model != getattr(config, role).model:  # a path, not a built-in name
            paths[f"{role}.model"] = model
    if resolved.init is not None:
        paths |= {
            f"init.{k}": getattr(resolved.init, k)
            for k in ("actor_data", "refiner_data")
            if getattr(resolved.init, k) is not None
        }
    for field, value in paths.items():
        if not Path(value).resolve().is_relative_to(root):
            raise ConfigError(f"{field}: {value} is outside the data root {root}; put the file under it")
    return resolved
