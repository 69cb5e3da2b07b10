"""Experiment tracking: the trainers' ``report_to`` and the run's per-iteration metrics.

Each training section's ``report_to`` (shared/config.py) is handed to transformers' Trainer, which
logs losses, learning rate and gradient norms to the named trackers. Two things are added here:

- the tracker's package is checked before anything trains (:func:`check_trackers`), so that a
  missing ``tensorboard`` or ``wandb`` is one line naming the setting and the pip package, at the
  start of a run instead of a trainer's traceback hours into it;
- with ``tensorboard``, the run's own per-iteration numbers (pass rate, tree success, pairs, RFT
  examples, IFEval and judge accuracy per version) are written as scalars next to the trainers' logs
  (:func:`log_stage_scalars`), under ``<run>/tracking/``. Hosted trackers (wandb, mlflow, ...) get
  only the trainers' logs: each of them opens its own remote run per training job, and pushing the
  pipeline's numbers there would need one long-lived remote run per spar run, which a set of
  workers on several machines cannot share without a tracker-specific run id protocol.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from shared.config import RunConfig, TrainCommon
from shared.errors import ConfigError

logger = logging.getLogger(__name__)

TRACKING_DIR = "tracking"
"""Folder of a run that holds its TensorBoard event files (one subfolder per training, one for the run)."""

ITERATIONS_LOG = "iterations"
"""Subfolder of ``tracking/`` with the per-iteration scalars."""

# tracker -> (modules, any of which makes it usable; the pip package that provides one)
PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "trackio": (("trackio",), "trackio"),
    "comet_ml": (("comet_ml",), "comet-ml"),
    "clearml": (("clearml",), "clearml"),
    "neptune": (("neptune",), "neptune"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
    "codecarbon": (("codecarbon",), "codecarbon"),
    "azure_ml": (("azureml",), "azureml-core"),
    "dagshub": (("dagshub",), "dagshub"),
    "flyte": (("flytekit",), "flytekit"),
    "kubeflow": (("kubeflow",), "kubeflow"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, a broken spec
        return False


def training_sections(config: RunConfig) -> dict[str, TrainCommon]:
    """Every training section of ``config`` by its dotted name (the name an error should blame)."""
    sections: dict[str, TrainCommon] = {
        "train_actor": config.train_actor,
        "train_refiner": config.train_refiner,
    }
    if config.init is not None:
        sections |= {"init.actor": config.init.actor, "init.refiner": config.init.refiner}
    return sections


def check_trackers(settings: TrainCommon, field: str) -> None:
    """Raise :class:`ConfigError` naming ``<field>.report_to`` and the pip package of a tracker whose
    package is not installed (found with importlib, nothing imported)."""
    for name in settings.trackers():
        modules, package = PACKAGES[name]
        if not any(_installed(m) for m in modules):
            raise ConfigError(
                f"{field}.report_to: {name!r} needs the {package!r} package, which is not installed: "
                f"pip install {package} (or set {field}.report_to: none)"
            )


def check_run_trackers(config: RunConfig) -> None:
    """:func:`check_trackers` for every training section the run's stages use."""
    stages = set(config.stages)
    for field, settings in training_sections(config).items():
        used = field.split(".")[0] in stages
        if used:
            check_trackers(settings, field)


def wants_tensorboard(config: RunConfig) -> bool:
    """Whether any training section of the run reports to TensorBoard."""
    return any("tensorboard" in s.trackers() for s in training_sections(config).values())


def trainer_tracking(settings: TrainCommon, checkpoint_dir: Path | None) -> dict[str, Any]:
    """The TrainingArguments of tracking: ``report_to`` and a ``run_name`` of ``<run id>/<role>-v<k>``.

    The trainer's output folder is the checkpoint folder, removed once the version is published, so
    TensorBoard's event files are sent to ``<run>/tracking/<role>-v<k>`` instead (transformers reads
    the folder from ``TENSORBOARD_LOGGING_DIR``; a training is one job per process, so setting it here
    is safe). The run's folder is the checkpoint folder's grandparent (``<run>/checkpoints/<role>-v<k>``).
    """
    trackers = settings.trackers()
    if not trackers:
        return {"report_to": "none"}
    kwargs: dict[str, Any] = {"report_to": trackers}
    if checkpoint_dir is not None:
        run_root = Path(checkpoint_dir).parent.parent
        kwargs["run_name"] = f"{run_root.name}/{Path(checkpoint_dir).name}"
        if "tensorboard" in trackers:
            os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_root / TRACKING_DIR / Path(checkpoint_dir).name)
    return kwargs


def _version_step(version: str) -> int | None:
    return int(version[1:]) if version[:1] == "v" and version[1:].isdigit() else None


def stage_scalars(stage: str, iteration: int, manifest: dict[str, Any]) -> list[tuple[str, float, int]]:
    """The scalars (tag, value, step) of one finished stage's manifest.

    Pipeline numbers are stepped by iteration; evaluation scores by the version they score (v<k> at
    step k), so that a version evaluated by two iterations lands on one point.
    """
    counts: dict[str, Any] = manifest.get("counts", {})
    out: list[tuple[str, float, int]] = []
    if stage == "judge":
        decided = counts.get("pass", 0) + counts.get("fail", 0)
        if decided:
            out.append(("judge/pass_rate", counts.get("pass", 0) / decided, iteration))
        out.append(("judge/negatives", float(counts.get("negatives", 0)), iteration))
    elif stage == "refine":
        if counts.get("trees"):
            out.append(("refine/tree_success", counts.get("successes", 0) / counts["trees"], iteration))
        out.append(("refine/trees", float(counts.get("trees", 0)), iteration))
    elif stage == "assemble":
        out.append(("assemble/pairs", float(counts.get("pairs", 0)), iteration))
        out.append(("assemble/rft_examples", float(counts.get("rft", 0)), iteration))
    elif stage in ("train_actor", "train_refiner"):
        curve = manifest.get("metrics", {}).get("loss_curve") or []
        if curve:
            out.append((f"{stage}/first_loss", float(curve[0]), iteration))
            out.append((f"{stage}/last_loss", float(curve[-1]), iteration))
    elif stage == "eval":
        metrics = manifest.get("metrics", {})
        for kind in ("ifeval", "validation", "judge"):
            for row in metrics.get(kind, []):
                step = _version_step(str(row.get("version", "")))
                if step is None:
                    continue
                for key, value in row.items():
                    if key not in ("version", "n") and isinstance(value, int | float):
                        out.append((f"eval/{kind}_{key}", float(value), step))
    return out


def summary_writer(log_dir: Path) -> Any:
    """TensorBoard's SummaryWriter (torch's, else tensorboardX's) writing into ``log_dir``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from tensorboardX import SummaryWriter  # type: ignore[no-redef]
    return SummaryWriter(log_dir=str(log_dir))


def log_stage_scalars(run_root: Path, config: RunConfig, stage: str, iteration: int, manifest: dict) -> None:
    """Write a finished stage's scalars to ``<run>/tracking/iterations`` when the run uses TensorBoard.

    Called once per stage, when its manifest is first written. Tracking is a side channel: a failure
    to write is logged and never fails the stage whose results are already safely on disk.
    """
    if not wants_tensorboard(config):
        return
    scalars = stage_scalars(stage, iteration, manifest)
    if not scalars:
        return
    try:
        writer = summary_writer(run_root / TRACKING_DIR / ITERATIONS_LOG)
        try:
            for tag, value, step in scalars:
                writer.add_scalar(tag, value, global_step=step)
        finally:
            writer.close()
    except Exception as exc:  # noqa: BLE001 - see the docstring: never fail a finished stage
        logger.warning("tracking.write_failed", extra={"stage": stage, "error": str(exc)})
