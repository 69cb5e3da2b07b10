"""Pushing published model versions to a Hugging Face Hub: the ``hub:`` section of a run config.

Why after publishing, and never instead of it: the local version (``models/<role>/v<k>/``, renamed
into place atomically) is the record that the training is done. A push is a copy of it, made only
once it exists, so a hub that is down, a wrong token or a full quota can cost the copy but never the
trained model. Each push leaves ``<run>/hub/<role>-v<k>.json`` (``shared.records.HubPush``): a retried
job finds a successful push of the same files to the same target there and does nothing, a failed
one is tried again. Creating a repo or a branch that exists is not an error, so a re-run never
fails for what an earlier attempt made.

``HF_HUB_OFFLINE=1`` (the Makefile sets it, so that nothing is ever downloaded) makes
``huggingface_hub`` refuse every request, uploads included. A configured push is an explicit request
to reach ``hub.endpoint``, so with ``hub.override_offline`` (the default) the push lifts the flag for
its own calls, under a lock, and sets it back; without it, the push fails with an error that says so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.config import HubConfig, RunConfig
from shared.errors import HubPushError
from shared.records import HubPush
from shared.runtime.artifacts import RunPaths, read_json, write_json_atomic
from shared.runtime.versions import read_metadata, version_dir

log = logging.getLogger("spar.hub")

_OFFLINE_LOCK = threading.Lock()


class HubOfflineError(RuntimeError):
    """HF_HUB_OFFLINE=1 is set and ``hub.override_offline`` is false."""


def fingerprint(folder: Path) -> tuple[str, list[str]]:
    """(hash of every file's relative path, size and modification time, the relative paths).

    Cheap on multi-GB weights (no file is read) and enough for its one use, telling a retried job
    whether this exact folder was pushed already: a published version changes only when the eval
    stage rewrites its card, which changes the card's size or time.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    names = []
    for path in files:
        name = path.relative_to(folder).as_posix()
        st = path.stat()
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        names.append(name)
    return digest.hexdigest()[:32], names


def resolved_endpoint(hub: HubConfig) -> str:
    """Where the push goes: ``hub.endpoint``, else ``$HF_ENDPOINT``, else the public hub."""
    if hub.endpoint is not None:
        return hub.endpoint
    from huggingface_hub import constants

    return constants.ENDPOINT


def previous_push(paths: RunPaths, role: str, version: int) -> HubPush | None:
    path = paths.hub_record(role, version)
    try:
        return HubPush.model_validate(read_json(path))
    except (OSError, ValueError):  # none yet (or unreadable: pushing again is the safe answer)
        return None


def push_version(
    paths: RunPaths, config: RunConfig, role: str, version: int, *, raise_failure: bool | None = None
) -> HubPush | None:
    """Push ``role`` v<version> of a run as ``config.hub`` says; None when no push is configured for it
    (or the version is an alias, which has no weights of its own).

    Never raises for a failed push unless ``raise_failure`` (default: ``hub.required``; then
    :class:`HubPushError`, after the failure is recorded): the version is published already and
    stays so either way.
    """
    hub = config.hub
    if hub is None or role not in hub.roles:
        return None
    if raise_failure is not None:
        hub = hub.model_copy(update={"required": raise_failure})
    folder = version_dir(paths, role, version)
    meta = read_metadata(folder)
    if meta is None:  # nothing published: a caller's mistake, not a hub problem
        raise FileNotFoundError(f"{folder} is not a published version; it cannot be pushed")
    label = f"v{version}"
    endpoint = resolved_endpoint(hub)
    fp, files = fingerprint(folder)
    base = {"role": role, "version": label, "endpoint": endpoint, "fingerprint": fp, "files": files}
    try:
        repo_id, revision = hub.target(paths.run_id, role, version)
    except ValueError as exc:
        return _record(paths, hub, version, HubPush(**base, repo_id="", revision="", **_failed(str(exc))))
    where = {"repo_id": repo_id, "revision": revision}
    if meta.alias_of is not None:
        log.info(
            "version not pushed: it has no weights of its own",
            extra={"event": "hub.push_skipped", "role": role, "version": label, "alias_of": meta.alias_of},
        )
        return None
    before = previous_push(paths, role, version)
    if (
        before is not None
        and before.status == "pushed"
        and (before.repo_id, before.revision, before.endpoint, before.fingerprint)
        == (repo_id, revision, endpoint, fp)
    ):
        log.info(
            "version already pushed",
            extra={"event": "hub.push_done_before", "role": role, "version": label, "endpoint": endpoint}
            | where,
        )
        return before
    token = os.environ.get(hub.token_env, "").strip()
    if not token:
        error = (
            f"hub.token_env: the environment variable {hub.token_env} is not set on this machine; export "
            "a write token in it where the training runs (e.g. the train worker's environment)"
        )
        return _record(paths, hub, version, HubPush(**base, **where, **_failed(error)))
    message = f"spar: {role} {label} of run {paths.run_id}"
    try:
        with _hub_requests_allowed(hub.override_offline):
            commit_url = _upload(endpoint, token, repo_id, revision, folder, hub.private, message)
    except Exception as exc:  # every failure of a copy is recorded; none loses the version
        error = describe_failure(exc, repo_id, endpoint, hub.token_env).replace(token, "***")  # never logged
        return _record(paths, hub, version, HubPush(**base, **where, **_failed(error)))
    record = HubPush(**base, **where, status="pushed", commit_url=commit_url, at=_now())
    log.info(
        "version pushed",
        extra={
            "event": "hub.pushed",
            "role": role,
            "version": label,
            "files": len(files),
            "commit_url": commit_url,
            "endpoint": endpoint,
            **where,
        },
    )
    return _record(paths, hub, version, record)


def _failed(error: str) -> dict[str, str]:
    return {"status": "failed", "error": error, "at": _now()}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _record(paths: RunPaths, hub: HubConfig, version: int, record: HubPush) -> HubPush:
    """Write the push's record; a failure is also logged, and raised when the push is required."""
    write_json_atomic(paths.hub_record(record.role, version), record.as_record())
    paths.note_change(f"hub {record.role} v{version} {record.status}")
    if record.status == "failed":
        log.error(
            "push to the hub failed; the version stays published locally",
            extra={
                "event": "hub.push_failed",
                "role": record.role,
                "version": record.version,
                "repo_id": record.repo_id,
                "revision": record.revision,
                "endpoint": record.endpoint,
                "error": record.error,
                "required": hub.required,
            },
        )
        if hub.required:
            raise HubPushError(
                f"pushing {record.role} {record.version} to {record.repo_id or 'the hub'} failed: "
                f"{record.error}. The version is published locally; retry the stage (or `spar run "
                "--resume`) to push again"
            )
    return record


def _upload(
    endpoint: str, token: str, repo_id: str, revision: str, folder: Path, private: bool, message: str
) -> str:
    """Create the repo (and branch) when missing, upload the folder; returns the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # its live upload display would tear through spar's own bars
    api = HfApi(endpoint=endpoint, token=token, library_name="spar")
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision, commit_message=message
    )
    return str(info.commit_url)


@contextmanager
def _hub_requests_allowed(override: bool) -> Iterator[None]:
    """Let this push's requests through ``HF_HUB_OFFLINE=1`` (``override``) or refuse clearly."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        yield
        return
    if not override:
        raise HubOfflineError("HF_HUB_OFFLINE=1")
    with _OFFLINE_LOCK:
        log.info("HF_HUB_OFFLINE lifted for the push's own requests", extra={"event": "hub.offline_lifted"})
        constants.HF_HUB_OFFLINE = False
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = True


def describe_failure(exc: BaseException, repo_id: str, endpoint: str, token_env: str) -> str:
    """One line: what went wrong, and what to change."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(exc, HubOfflineError | OfflineModeIsEnabled):
        return (
            "HF_HUB_OFFLINE=1 blocks every huggingface_hub request, uploads included; set "
            "hub.override_offline: true (the push then lifts it for its own requests) or unset HF_HUB_OFFLINE"
        )
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    # the server's own words when it sent some (huggingface_hub's HTTP errors carry them), else the
    # error's first line (its later lines are generic links)
    text = getattr(exc, "server_message", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    detail = " ".join(str(text).split())[:300]
    if status in (401, 403):
        return (
            f"{endpoint} refused the token in {token_env} (HTTP {status}) for {repo_id}: use a token with "
            f"write access to its namespace, or change hub.repo_id ({detail})"
        )
    if status == 404:
        return f"{endpoint} has no such repo or API (HTTP 404) for {repo_id}: check hub.endpoint ({detail})"
    if isinstance(status, int):
        return f"{endpoint} answered HTTP {status} for {repo_id}: retry later ({detail})"
    if isinstance(exc, OSError | ConnectionError) or type(exc).__module__.startswith("httpx"):
        return f"cannot reach {endpoint} ({type(exc).__name__}: {detail}): check hub.endpoint and the network"
    return f"{type(exc).__name__}: {detail}"


def push_run(paths: RunPaths, config: RunConfig) -> list[HubPush]:
    """Every published version of the configured roles, pushed unless pushed already as it is:
    ``spar hub push RUN_DIR``, for the pushes a run recorded as failed (without ``hub.required`` the
    run went on). Failures are returned, not raised."""
    from shared.runtime.versions import latest_version

    out = []
    for role in config.hub.roles if config.hub is not None else []:
        for k in range(latest_version(paths, role) + 1):
            if read_metadata(version_dir(paths, role, k)) is None:
                continue  # v0 as configured: not a version of this run
            pushed = push_version(paths, config, role, k, raise_failure=False)
            if pushed is not None:
                out.append(pushed)
    return out
