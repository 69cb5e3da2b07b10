"""Every setting spar reads from the environment, in one pydantic-settings model (``SPAR_*``).

The API server, the workers, the CLI and the engine processes all read their settings here, so a
variable is named, typed, defaulted and documented once (``docs/operations.md`` lists them for
operators). Values are read when :func:`settings` is called, not at import, so a process that sets
a variable (the CLI's ``--cache-dir``, a test) is seen by the code it runs next.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import WorkerSettingsError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MIN_TOKEN_LENGTH = 32
"""Shortest SPAR_API_TOKEN the API starts with (e.g. ``openssl rand -hex 32`` gives 64)."""

HF_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",  # models are local folders; nothing is fetched from a hub
    "HF_HUB_DISABLE_TELEMETRY": "1",  # trl and transformers report usage unless told not to
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",  # tokenizers' threads and forked workers deadlock
}
"""Hugging Face settings every spar process runs with, unless the environment sets them."""


class SparSettings(BaseSettings):
    """The environment of a spar process. Unknown ``SPAR_*`` variables are ignored."""

    model_config = SettingsConfigDict(env_prefix="SPAR_", extra="ignore")

    # where things are
    redis_url: str = Field(DEFAULT_REDIS_URL, description="Redis of the queues and run states.")
    data_root: Path = Field(Path("data"), description="Configs may only point inside it.")
    runs_dir: Path | None = Field(None, description="Where runs live (default: DATA_ROOT/runs).")
    cache_dir: Path | None = Field(None, description="Built-in models and NLTK data (~/.cache/spar).")
    # the API server
    api_token: str = Field(
        "",
        description=f"Bearer token required on every route but health; at least {MIN_TOKEN_LENGTH} "
        "characters (the API refuses to start with a shorter one).",
    )
    max_body_bytes: int = Field(
        1_000_000, ge=1, description="Largest request body the API accepts (bytes received, chunked too)."
    )
    allow_remote_code: bool = Field(
        False,
        description="Accept trust_remote_code: true in run configs (workers then run Python shipped "
        "with a model folder). Off: such a config is refused with a 400.",
    )
    allow_hub_push: bool = Field(
        False,
        description="Accept a `hub:` section in run configs sent to the API (a train worker then sends the "
        "token named by hub.token_env to hub.endpoint). Off: such a config is refused with a 400.",
    )
    max_iterations: int = Field(
        100, ge=1, le=1000, description="Most iterations a run created over the API may ask for."
    )
    access_log: Literal["writes", "all", "off"] = Field(
        "writes",
        description="The API's access log (JSON lines, logger spar.api.access): 'writes' logs every request "
        "that may change something and every answer >= 400, 'all' every request, 'off' none.",
    )
    refine_per_minute: int = Field(
        120,
        ge=1,
        description="POST /v1/refine calls the API accepts per minute, all clients together (then 429 "
        "with Retry-After): each one is a job holding up to ~300 KB in Redis until it expires.",
    )
    max_header_bytes: int = Field(
        65_536,
        ge=4096,
        description="Largest request line plus headers the API reads (then 400 and the connection closed).",
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to send a request's line and headers (then closed)."
    )
    scheduler: bool = Field(True, description="Run the scheduler loop in the API process.")
    scheduler_stale_s: float = Field(
        30.0,
        gt=0,
        description="/readyz answers 503 when no scheduler has completed a tick for this many seconds.",
    )
    scheduler_interval: float = Field(1.0, gt=0, description="Seconds between scheduler ticks.")
    view_state_ttl: float = Field(
        0.25,
        ge=0,
        le=60,
        description="Seconds the API may reuse a run's scheduler state read from Redis for GET /v1/runs/{id} "
        "(its own changes show at once; another API replica's after at most this long; 0: read every time).",
    )
    job_timeout: int = Field(6 * 3600, ge=1, description="Seconds an inference shard may run.")
    train_timeout: int = Field(24 * 3600, ge=1, description="Seconds a training job may run.")
    retries: int = Field(3, ge=0, description="Retries of a failed shard before the run fails.")
    retry_intervals: str = Field("5,30,120", description="Seconds before each retry, comma separated.")
    # the workers
    worker_redis_timeout: float = Field(
        30.0, gt=0, description="Seconds a worker waits on one Redis reply before it reconnects."
    )
    engine_isolation: Literal["", "process", "inline"] = Field(
        "", description="Where an engine lives: '' (vLLM in a child process, HF inline), process, inline."
    )
    log_level: str = Field("INFO", description="Level of spar's own logs in engine processes.")
    engine_log_level: str = Field("ERROR", description="Level of vLLM's logs inside engine processes.")
    fail_shards: str = Field("", description="Drills only: 'stage:shard,...' to fail on purpose.")

    @property
    def runs_root(self) -> Path:
        return (self.runs_dir or self.data_root / "runs").resolve()

    @property
    def cache_root(self) -> Path:
        return (self.cache_dir or Path.home() / ".cache" / "spar").expanduser()


def settings() -> SparSettings:
    """The current environment's settings; an invalid value is an error naming its variable."""
    try:
        return SparSettings()
    except ValidationError as exc:
        names = ", ".join(f"SPAR_{str(e['loc'][0]).upper()} ({e['msg']})" for e in exc.errors())
        raise WorkerSettingsError(f"invalid setting in the environment: {names}") from None


def apply_hf_environment() -> None:
    """Set :data:`HF_ENVIRONMENT` where the environment does not say otherwise (before HF imports)."""
    for name, value in HF_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
