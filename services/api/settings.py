"""The API server's settings: the environment (``SPAR_*``, shared/runtime/settings.py) plus scheduler
limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.runtime.settings import SparSettings

from ..scheduler import SchedulerSettings


class Settings(SparSettings):
    """The process's settings (shared/runtime/settings.py) plus what the scheduler makes of them."""

    schedule_order: Literal["graph", "serial"] = Field(
        "graph",
        description="graph: every stage whose inputs are complete runs at once on its pool; serial: one "
        "stage at a time in pipeline order (the order before the stage graph; for comparisons).",
    )
    fair_window: int = Field(
        8,
        ge=1,
        description="The fewest unfinished jobs one run may hold in a queue (at least 2 per live worker of "
        "it): runs sharing a pool take turns instead of one run's stage filling the queue.",
    )

    def scheduler_settings(self) -> SchedulerSettings:
        return SchedulerSettings(
            job_timeout=self.job_timeout,
            train_timeout=self.train_timeout,
            retries=self.retries,
            retry_intervals=tuple(int(x) for x in self.retry_intervals.split(",") if x.strip()),
            order=self.schedule_order,
            fair_window=self.fair_window,
        )
