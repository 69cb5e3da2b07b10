"""Checkpoints by the clock as well as by the step count.

``save_steps`` alone bounds what a kill costs in steps, and a CPU step can take 15 s: 100 steps are
half an hour of lost work when the process dies between two checkpoints. This callback asks the
trainer for a checkpoint once ``seconds`` passed since the last one, so a kill costs at most that.
Used for one process only (``outcome.add_timed_checkpoints``): ranks reading their own clocks could
decide on different steps, and a distributed save is a collective every rank must enter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback


class TimedCheckpoints(TrainerCallback):
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self.last = clock()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last = self.clock()  # loading the model and a resume's restore are not training time

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # the last step needs none: the final model is saved anyway
        if self.clock() - self.last >= self.seconds and state.global_step < state.max_steps:
            control.should_save = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last = self.clock()  # a step-count checkpoint restarts the clock too
