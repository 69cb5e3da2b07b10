"""What ``spar run`` shows while it works, told honestly.

Why: the bars used to sit at "sample 0/3" for a minute while the engine loaded, gave no sense of
how far along the run was, and a training stage that changed nothing (its only step at learning
rate 0) looked like every other. Here: a loading line while a model loads, "stage k of N" and
"iteration t of T" on each stage's bar with its elapsed time and ETA, one line per finished stage
with its time, and a warning for training steps run at learning rate 0.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .eta import RunEta, format_eta

WARMUP_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant_with_warmup")
"""transformers schedules whose warmup starts at learning rate 0 (step 0 gets factor 0/warmup)."""


def zero_lr_steps(lr_scheduler: str, warmup_ratio: float, steps: int) -> int:
    """Optimizer steps that ran at learning rate 0 under transformers' warmup.

    transformers turns a ratio into ``ceil(steps * ratio)`` warmup steps and scales step ``s`` by
    ``s / warmup``: with any warmup at all, the first step's factor is exactly 0. That is one wasted
    step in a long run, but the whole training in a one-step run (the tiny example's actor).
    """
    if steps <= 0 or warmup_ratio <= 0 or lr_scheduler not in WARMUP_SCHEDULES:
        return 0
    return 1 if math.ceil(steps * warmup_ratio) >= 1 else 0


def zero_lr_warning(run_root: Path, iteration: int, stage: str) -> str | None:
    """The warning for a finished training stage whose version ran steps at learning rate 0."""
    import json

    role = {"train_actor": "actor", "train_refiner": "refiner"}.get(stage)
    if role is None:
        return None
    meta = run_root / "models" / role / f"v{iteration + 1}" / "spar_version.json"
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    hyper = record.get("hyperparameters") or {}
    steps = int((record.get("metrics") or {}).get("steps") or 0)
    zero = zero_lr_steps(
        str(hyper.get("lr_scheduler", "linear")), float(hyper.get("warmup_ratio", 0.0)), steps
    )
    if not zero:
        return None
    whole = " -- the model did not change" if zero >= steps else ""
    return (
        f"{stage} (iteration {iteration}): {zero} of {steps} optimizer step(s) ran at learning rate 0 "
        f"(warmup_ratio {hyper.get('warmup_ratio')} with the {hyper.get('lr_scheduler')} schedule "
        "starts at 0)"
        f"{whole}; set {stage}.warmup_ratio: 0 or train more steps (more prompts, epochs or max_steps)"
    )


def hub_push_warnings(run_root: Path, iteration: int, stage: str) -> list[str]:
    """One line per failed hub push that a finished stage recorded (``metrics.hub`` of its record):
    a push that is not ``required`` fails quietly otherwise, and the user must see it."""
    import json

    done = run_root / f"iter_{iteration}" / stage / "shard_00000.done.json"
    try:
        pushes = (json.loads(done.read_text(encoding="utf-8")).get("metrics") or {}).get("hub") or []
    except (OSError, ValueError):
        return []
    return [
        f"{stage} (iteration {iteration}): {p.get('role')} {p.get('version')} is published locally but its "
        f"push to {p.get('repo_id') or 'the hub'} failed: {p.get('error')}"
        for p in pushes
        if isinstance(p, dict) and p.get("status") == "failed"
    ]


class RunProgress:
    """Two bars (the stage's shards, the current shard's engine batches) plus plain lines.

    ``order`` is the run's (iteration, stage) list, so each bar says which stage of how many it is.
    Used as a context manager; with ``disabled`` only the plain lines are printed.
    """

    def __init__(
        self,
        console: Any,
        order: Iterable[tuple[int, str]],
        iterations: int,
        disabled: bool,
        eta: Callable[[], RunEta] | None = None,
    ) -> None:
        self.console = console
        self.order = list(order)  # shared.stages.pipeline yields: keep a list to count in
        self.iterations = iterations
        self.disabled = disabled
        self.bars: Any = None
        self.stage_task: Any = None
        self.batch_task: Any = None
        self.stage_started: dict[tuple[int, str], float] = {}
        self.eta_source = eta  # the run's ETA from its recorded rates (services/eta.py), if given
        self.eta: RunEta | None = None

    def refresh_eta(self) -> None:
        """Recompute the run's ETA (after each shard: what it reads changes only then). An ETA that
        cannot be computed is no ETA, never a failed run."""
        if self.eta_source is None:
            return
        try:
            self.eta = self.eta_source()
        except Exception as exc:  # a half-written record, a removed file: say nothing rather than fail
            logging.getLogger("spar.progress").warning(
                "no run ETA", extra={"event": "eta.failed", "error": str(exc)[:200]}
            )
            self.eta = None

    def eta_text(self) -> str:
        return format_eta(self.eta)

    def label(self, iteration: int, stage: str) -> str:
        """'stage 3 of 14 · iteration 1 of 2 · refine': where the run is, counted from 1."""
        k = self.order.index((iteration, stage)) + 1 if (iteration, stage) in self.order else 0
        return f"stage {k} of {len(self.order)} · iteration {iteration + 1} of {self.iterations} · {stage}"

    def __enter__(self) -> RunProgress:
        if not self.disabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bars = Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<52}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("elapsed"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                _eta_column(TimeRemainingColumn()),
                console=self.console,
                transient=False,
            )
            self.bars.__enter__()
            self.batch_task = self.bars.add_task("", total=1, visible=False)
        return self

    def __exit__(self, *exc: object) -> bool:
        if self.bars is not None:
            self.bars.__exit__(*exc)
        return False

    def on_shard(self, iteration: int, stage: str, done: int, total: int) -> None:
        key = (iteration, stage)
        self.refresh_eta()
        if key not in self.stage_started:
            self.stage_started[key] = time.perf_counter()
            if self.bars is not None:
                fields = {"run_eta": self.eta_text} if self.eta_source is not None else {}
                self.stage_task = self.bars.add_task(
                    f"{self.label(iteration, stage)} (shards)", total=total, **fields
                )
            else:
                self.console.print(f"{self.label(iteration, stage)}: started")
        if self.bars is not None:
            self.bars.update(self.stage_task, completed=done, total=total)
            if done == total:
                self.bars.update(self.batch_task, visible=False)
        if done == total:
            seconds = time.perf_counter() - self.stage_started[key]
            eta = f" · {self.eta_text()}" if self.eta_source is not None else ""
            self.console.print(f"{self.label(iteration, stage)}: done in {seconds:.1f} s{eta}")

    def on_batch(self, label: str, done: int, total: int) -> None:
        if self.bars is not None:
            self.bars.update(
                self.batch_task, description=f"  {label}", completed=done, total=max(total, 1), visible=True
            )

    def on_loading(self, role: str, label: str) -> None:
        """A model starts loading: said as such (an indeterminate bar), not as a batch stuck at 0."""
        if self.bars is not None:
            self.bars.update(
                self.batch_task,
                description=f"  loading {role} model {label}",
                completed=0,
                total=None,
                visible=True,
            )
        else:
            self.console.print(f"loading {role} model {label} ...")

    def on_loaded(self, role: str, label: str, seconds: float) -> None:
        if self.bars is not None:
            self.bars.update(self.batch_task, visible=False, total=1)
        self.console.print(f"loaded {role} model {label} in {seconds:.1f} s")


def _eta_column(fallback: Any) -> Any:
    """The ETA column: a stage's bar shows the run's ETA (its ``run_eta`` field, counting down between
    shards), any other bar rich's own estimate of itself (``fallback``)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RunEtaColumn(ProgressColumn):
        def render(self, task: Any) -> Any:
            text = task.fields.get("run_eta")
            return Text(text(), style="progress.remaining") if callable(text) else fallback.render(task)

    return RunEtaColumn()
