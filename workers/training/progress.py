"""Training progress as structured log events and progress-bar updates, instead of printed dicts.

transformers' ``PrinterCallback`` prints every log dict on stdout, which would interleave with the
CLI's tables; these events go to the run's ``events.jsonl`` (and the progress bar) instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from transformers import PrinterCallback, TrainerCallback

log = logging.getLogger("spar.train")

StepHook = Callable[[int, int], None]
"""Called after each optimizer step with (steps done, total steps)."""


class StepLogger(TrainerCallback):
    def __init__(self, role: str, on_step: StepHook | None = None):
        self.role = role
        self.on_step = on_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        numbers = {
            k.replace("/", "_"): float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))
        }
        log.info(
            "training step",
            extra={
                "event": "train.log",
                "role": self.role,
                "step": state.global_step,
                "max_steps": state.max_steps,
                **numbers,
            },
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.on_step is not None:
            self.on_step(state.global_step, state.max_steps)


def attach(trainer: Any, role: str, on_step: StepHook | None) -> None:
    """Replace the stdout printer of ``trainer`` by structured logs and the progress hook."""
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepLogger(role, on_step))
