"""Creating a run directory from a config file, and opening an existing one to resume it.

Creation validates everything before any work starts: the config (unknown keys, bad values), the
prompt file (every malformed line, by number), and the model names or folders. Relative paths in a
config are resolved against the directory of the config file, so a config means the same thing
whatever directory ``spar run`` is started from.
"""

from __future__ import annotations

import datetime as dt
import difflib
import errno
import os
import secrets
import shutil
import tempfile
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from shared.config import RunConfig, path_fields, walk_fields, with_fields
from shared.errors import ConfigError, PromptFileError, StorageError
from shared.names import RUN_NAME_HELP, is_id
from shared.prompts import PromptRecord, iter_prompt_lines, parse_prompt_lines
from shared.runtime.artifacts import RunPaths, read_json, write_json_atomic, write_jsonl_atomic
from shared.runtime.data_inputs import INPUTS_KEY, input_digests
from shared.runtime.versions import is_builtin


def _section_class(loc: tuple) -> type[BaseModel] | None:
    """The config section (pydantic model) that holds the field at ``loc``, or None when unknown."""
    cls: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        if not isinstance(part, str) or part not in cls.model_fields:
            return None
        annotation = cls.model_fields[part].annotation
        candidates = [annotation, *typing.get_args(annotation)]
        sections = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not sections:
            return None
        cls = sections[0]
    return cls


def did_you_mean(loc: tuple) -> str:
    """' (did you mean 'x'?)' for a misspelt key at ``loc``: the closest field of its section."""
    section = _section_class(loc)
    if section is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(section.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _override_for(loc: tuple, overrides: list[str]) -> str | None:
    """The ``--set`` item that an error at ``loc`` comes from: its key is ``loc``, inside it or above it."""
    path = [str(p) for p in loc]
    for item in reversed(overrides):  # the last --set of a key is the one that counts
        key = item.partition("=")[0].strip().split(".")
        n = min(len(key), len(path))
        if key[:n] == path[:n]:
            return item
    return None


def format_validation_error(exc: ValidationError, source: str, overrides: list[str] | None = None) -> str:
    """One line per problem, each blaming where the value came from: the file or a ``--set`` flag."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problem = f"{where}: unknown key{did_you_mean(tuple(err['loc']))} (see examples/demo.yaml)"
        elif err["type"] == "missing":
            problem = f"{where}: required field is missing"
        else:
            problem = f"{where}: {err['msg']} (got {err.get('input')!r})"
        item = _override_for(tuple(err["loc"]), overrides or []) if err["loc"] else None
        problems.append((f"--set {item}" if item is not None else source, problem))
    sources = {origin for origin, _ in problems}
    if sources == {source}:
        return "\n".join([f"{source}: invalid run configuration"] + [f"  {p}" for _, p in problems])
    return "\n".join(["invalid run configuration"] + [f"  {origin}: {p}" for origin, p in problems])


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
        raise ConfigError(format_validation_error(exc, str(path), overrides)) from exc
    return resolve_paths(config, path.parent)


def resolve_paths(config: RunConfig, base: Path, check_files: bool = True) -> RunConfig:
    """Make every path field (:func:`shared.config.path_fields`) absolute, relative to ``base``.

    A model field holding a built-in name ('tiny', 'smollm2') is left as it is. ``check_files``:
    the init datasets must exist (the API checks only after confining them, so that a client cannot
    probe for files outside the data root).
    """

    def absolute(where: str, p: str) -> str:
        try:
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else (base / q).resolve())
        except (RuntimeError, OSError) as exc:  # "~nosuchuser", a name too long, a symlink loop
            raise ConfigError(f"{where}: {p[:80]!r} is not a usable path ({exc})") from exc

    update = {
        where: absolute(where, value)
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
    path = _prompts_path(config)
    with path.open("rb") as f:
        records = parse_prompt_lines(f, source=str(path))
    return records[: config.max_prompts] if config.max_prompts else records


def _prompts_path(config: RunConfig) -> Path:
    path = Path(config.prompts)
    if not path.is_file():
        raise ConfigError(f"prompts: file {path} does not exist (paths are relative to the config file)")
    return path


MAX_SHARDS = 20_000
"""Most shards a run may have (prompts / shard_size, rounded up). Each is a job, a file and a done
marker, and cancel and resume look at every one: past this, raise ``shard_size``."""


def write_prompt_shards(config: RunConfig, paths: RunPaths) -> tuple[int, int]:
    """Validate the prompt file and write its shards as it is read: (prompts, shards).

    Streamed: one shard's records in memory at a time (plus the ids seen, to refuse duplicates),
    where the whole file used to be parsed into a list first (a 10^6-line file: +526 MB in the API).
    Every malformed line is still reported, by number, after the whole file was read.
    """
    path = _prompts_path(config)
    problems: list[tuple[int, str]] = []
    count = shards = 0
    chunk: list[dict[str, object]] = []

    def flush() -> None:
        nonlocal shards, chunk
        if shards >= MAX_SHARDS:
            raise ConfigError(
                f"shard_size: more than {MAX_SHARDS * config.shard_size} prompts at shard_size "
                f"{config.shard_size} make more than {MAX_SHARDS} shards (the most a run may have); "
                "raise shard_size or set max_prompts"
            )
        write_jsonl_atomic(paths.prompt_shard(shards), chunk)
        shards, chunk = shards + 1, []

    with path.open("rb") as f:
        for record in iter_prompt_lines(f, problems):
            if config.max_prompts and count >= config.max_prompts:
                break
            if not problems:  # once a line is bad, only the remaining lines' problems matter
                chunk.append(record.as_record())
                if len(chunk) == config.shard_size:
                    flush()
            count += 1
    if problems:
        raise PromptFileError(str(path), problems)
    if not count:
        raise PromptFileError(str(path), [(0, "the file holds no prompts")])
    if chunk:
        flush()
    return count, shards


def new_run_id(name: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def create_run(config: RunConfig, runs_dir: Path, run_id: str | None = None, source: str = "") -> RunPaths:
    """Write the run's config and prompt shards; refuses to reuse an existing run directory.

    Atomic: the run is built in a hidden temporary folder beside its final place and renamed into
    it, so a full or read-only disk leaves no half-created run behind (and the error says which).
    """
    _prompts_path(config)
    if config.evaluation.validation_prompts is not None and "eval" in config.stages:
        from shared.evaluation.ifeval import validation_items

        validation_items(
            Path(config.evaluation.validation_prompts)
        )  # a wrong file fails now, not hours later
    if run_id is not None and not is_id(run_id):
        raise ConfigError(f"run id {run_id[:80]!r}: use {RUN_NAME_HELP} characters")
    final = RunPaths(runs_dir / (run_id or new_run_id(config.name)))
    if final.root.exists():
        raise ConfigError(f"run {final.root} exists already; resume it with --resume {final.root}")
    building: Path | None = None
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".creating-{final.run_id}-", dir=runs_dir))
        paths = RunPaths(building)
        n_prompts, n_shards = write_prompt_shards(config, paths)
        write_json_atomic(
            paths.config,
            {
                "config": config.model_dump(mode="json"),
                "source": source,
                "created_at": dt.datetime.now(dt.UTC).isoformat(),
                "prompts": n_prompts,
                "shards": n_shards,
                INPUTS_KEY: input_digests(config),  # data files read later, pinned by content
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


MAX_PATH_CHARS = 4096
"""Longest path (made absolute) a config may name: Linux's PATH_MAX."""
MAX_NAME_BYTES = 255
"""Longest component of a path: Linux's NAME_MAX (past it, every file call fails with ENAMETOOLONG)."""


def check_path_text(where: str, value: str, root: Path) -> None:
    """A path field as the API received it: 400 naming the field for what no file call could use.

    A NUL byte, a home folder (``~`` or ``~user``: paths are relative to the data root, and
    ``~nosuchuser`` once crashed the resolution), a component over 255 bytes or a path over 4096
    characters once made absolute (both once reached a file call and came back as a 500).
    """
    if "\x00" in value:
        raise ConfigError(f"{where}: a path may not contain a NUL character")
    if value.startswith("~"):
        raise ConfigError(
            f"{where}: {value[:80]!r} names a home folder; give a path relative to the data root"
        )
    longest = max((len(part.encode("utf-8", "surrogatepass")) for part in value.split("/")), default=0)
    if longest > MAX_NAME_BYTES:
        raise ConfigError(
            f"{where}: a path component of {longest} bytes; each name in a path is at most {MAX_NAME_BYTES}"
        )
    if len(str(root / value)) > MAX_PATH_CHARS:
        raise ConfigError(
            f"{where}: the path is over {MAX_PATH_CHARS} characters once put under the data root {root}"
        )


def confine(
    config: RunConfig,
    root: Path,
    *,
    allow_remote_code: bool = False,
    max_iterations: int | None = None,
    allow_hub_push: bool = False,
) -> RunConfig:
    """The server's rules for a config sent over the API (400 naming the field on any breach).

    * Every path field (marked with :func:`shared.config.path_field`, so fields added later are
      covered too), relative or absolute, must resolve -- through symlinks -- to a place inside the
      data root ``root``; relative ones are taken relative to it. Built-in model names pass.
    * ``trust_remote_code`` (hf and vllm sections of both roles) is refused unless the server was
      started with ``SPAR_ALLOW_REMOTE_CODE=1``: it runs Python shipped in a model folder.
    * ``iterations`` may not exceed the server's ``SPAR_MAX_ITERATIONS``.
    * ``hub`` is refused unless the server was started with ``SPAR_ALLOW_HUB_PUSH=1``: a train worker
      would send the token in the environment variable it names to the endpoint it names.
    """
    root = root.resolve()
    if config.hub is not None and not allow_hub_push:
        raise ConfigError(
            "hub: pushing models to a hub is disabled on this server; remove the section (an operator may "
            "allow it with SPAR_ALLOW_HUB_PUSH=1)"
        )
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
        check_path_text(where, value, root)
    resolved = resolve_paths(config, root, check_files=False)
    original = {where: value for where, value, _ in path_fields(config)}
    real: dict[str, str] = {}
    for where, value, kind in path_fields(resolved):
        if kind == "model" and value == original.get(where) and is_builtin(value):
            continue  # a built-in model name, not a path
        try:
            target = Path(value).resolve()
        except (OSError, ValueError, RuntimeError) as exc:  # too long, a symlink loop ...
            raise ConfigError(f"{where}: {original.get(where)!r} is not a usable path ({exc})") from exc
        if not target.is_relative_to(root):
            raise ConfigError(
                f"{where}: {original.get(where)} is outside the data root {root}; put the file under it"
            )
        real[where] = str(target)
    # stored as resolved through every symlink: what was checked is what workers open (they check
    # again before reading, ``shared/runtime/confinement.py``, in case a link inside was retargeted since)
    try:
        stored = with_fields(resolved, real)
    except ValidationError as exc:
        raise ConfigError(f"a path is over {MAX_PATH_CHARS} characters once its links are resolved") from exc
    return resolve_paths(stored, root)  # absolute already: this checks the init files exist
