"""Checking every path and model of a run config before a run directory exists.

Why: a run directory is only worth creating when the run can start. A model folder that does not
exist used to surface only when the first stage loaded it, after ``spar run`` had already made the
run directory, so the user fixed the path, ran again and was left with a half-made run that
``--resume`` would repeat. ``spar run`` and ``spar run --dry-run`` both call :func:`check_inputs`
(and :func:`check_hub`, the token a configured hub push needs) first; nothing is written before they
pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from shared.config import RunConfig, path_fields
from shared.errors import ConfigError, ModelNotFoundError
from shared.runtime.versions import BUILTIN_MODELS, is_builtin
from workers.models.registry import resolve_model


class ResolvedInput(BaseModel):
    """One path field of the config as it will be used: what it names and what that resolved to."""

    field: str
    value: str
    kind: str
    resolved: str
    note: str = ""


def check_inputs(config: RunConfig, prepare_builtin: bool = False) -> list[ResolvedInput]:
    """Every path field resolved and checked; raises one error naming the field and the fix.

    ``prepare_builtin`` also builds a built-in model ('tiny', 'smollm2') into the cache now (what
    the dry run needs to calibrate); otherwise a built-in name is accepted as it is, since the run
    prepares it on first use and its name cannot be wrong once the config validated.
    """
    found: list[ResolvedInput] = []
    for where, value, kind in path_fields(config):
        if kind == "model":
            if is_builtin(value):
                resolved = (
                    str(resolve_model(value))
                    if prepare_builtin
                    else "built-in (prepared in the cache on first use)"
                )
                found.append(
                    ResolvedInput(field=where, value=value, kind=kind, resolved=resolved, note="built-in")
                )
                continue
            try:
                folder = resolve_model(value)
            except ModelNotFoundError as exc:
                raise ConfigError(
                    f"{where}: {exc} (paths are relative to the config file; built-in names: "
                    f"{', '.join(BUILTIN_MODELS)})"
                ) from exc
            found.append(ResolvedInput(field=where, value=value, kind=kind, resolved=str(folder)))
            continue
        path = Path(value)
        if not path.exists():
            raise ConfigError(
                f"{where}: {value} does not exist (relative paths are relative to the config file); "
                "fix the path or remove the setting"
            )
        found.append(ResolvedInput(field=where, value=value, kind=kind, resolved=str(path.resolve())))
    return found


def check_hub(config: RunConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The hub push a run will make, checked before anything runs; raises one error naming the field.

    Why now: a version is pushed after its training, so a token missing from the environment would
    otherwise be found hours into the run. Only what this machine can know is checked (the token is
    set, the endpoint is a URL); whether the hub accepts the token shows at the first push. Returns
    a line saying where versions will go, or None without ``hub:``.
    """
    hub = config.hub
    if hub is None:
        return None
    env = os.environ if environ is None else environ
    if not env.get(hub.token_env, "").strip():
        raise ConfigError(
            f"hub.token_env: the environment variable {hub.token_env} is not set; export a write token "
            f"in it (export {hub.token_env}=...) or remove the hub section (tokens are never stored in a "
            "config)"
        )
    offline = env.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    if offline and not hub.override_offline:
        raise ConfigError(
            "hub.override_offline: HF_HUB_OFFLINE=1 is set, which blocks every upload; set "
            "hub.override_offline: true (the push then lifts it for its own requests) or unset HF_HUB_OFFLINE"
        )
    endpoint = hub.endpoint or env.get("HF_ENDPOINT") or "https://huggingface.co"
    where = f"{hub.repo_id} (revision {hub.revision})"
    required = (
        "a failed push fails the stage" if hub.required else "a failed push is recorded, the run goes on"
    )
    return f"hub: {', '.join(hub.roles)} versions pushed to {where} on {endpoint}; {required}"
