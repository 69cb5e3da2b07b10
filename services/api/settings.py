"""The API server's settings: the environment (``SPAR_*``, workers/settings.py) plus scheduler limits."""

from __future__ import annotations

from shared.runtime.settings import SparSettings

from ..scheduler import SchedulerSettings


class Settings(SparSettings):
    """The process's settings (workers/settings.py) plus what the scheduler makes of them."""

    def scheduler_settings(self) -> SchedulerSettings:
        return SchedulerSettings(
            job_timeout=self.job_timeout,
            train_timeout=self.train_timeout,
            retries=self.retries,
            retry_intervals=tuple(int(x) for x in self.retry_intervals.split(",") if x.strip()),
        )
