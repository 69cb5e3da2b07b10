"""The API server's settings, read from the environment (``SPAR_*``) as compose and the manifests set them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..scheduler import SchedulerSettings


class Settings(BaseSettings):
    """Everything comes from the environment (``SPAR_*``); tests pass an instance to ``create_app``."""

    model_config = SettingsConfigDict(env_prefix="SPAR_", extra="ignore")

    api_token: str = Field("", description="Bearer token required on every route but health.")
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_root: Path = Path("data")
    runs_dir: Path | None = None
    max_body_bytes: int = 1_000_000
    scheduler: bool = True
    scheduler_interval: float = 1.0
    job_timeout: int = 6 * 3600
    train_timeout: int = 24 * 3600
    retries: int = 3
    retry_intervals: str = "5,30,120"

    @property
    def runs_root(self) -> Path:
        return (self.runs_dir or self.data_root / "runs").resolve()

    def scheduler_settings(self) -> SchedulerSettings:
        return SchedulerSettings(
            job_timeout=self.job_timeout,
            train_timeout=self.train_timeout,
            retries=self.retries,
            retry_intervals=tuple(int(x) for x in self.retry_intervals.split(",") if x.strip()),
        )
