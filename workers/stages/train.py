"""Stage 5 runners (and stage 0): train M_{t+1} and R_{t+1} from iteration t's data.

Each runner reads the iteration's assembled data, trains from version t (the reference model is
version t itself, frozen), and publishes ``models/<role>/v<t+1>/`` atomically with its metadata.
A published version is the record that the training is done: a retried job finds it and does not
train again. When there is nothing to learn from (no pairs), the new version is an alias of its
parent, so the next iteration still finds a model.

Training writes step checkpoints to ``checkpoints/<role>-v<k>/`` in the run's directory, which
outlives the worker: a job killed mid-training and retried resumes from the last complete one, and
the folder is removed once the version is published. With ``num_processes > 1`` or a ``distributed``
mode the training runs through ``accelerate launch`` in a child process (see
:func:`workers.training.launch.launch_job`); its rank 0 writes the model into the staging folder and
this process alone publishes it. With ``SPAR_TRAIN_LAUNCHER=jobset`` the worker hands the stage to a
JobSet across GPU nodes instead (:mod:`workers.training.jobset`): node 0 of that job publishes the
version, and the worker reports what it finds published.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shared.config import TrainCommon
from shared.records import ShardOutput, TrainCounts, VersionMetadata
from shared.runtime.artifacts import RunPaths, file_sha256, read_jsonl
from shared.runtime.tracking import check_trackers
from shared.runtime.versions import (
    ModelVersion,
    check_rebuilt,
    publishing,
    read_metadata,
    version_dir,
    write_metadata,
)

from ..hub import push_version
from ..model_card import card_for_version
from ..models.registry import model_folder
from .common import StageContext, version_label

if TYPE_CHECKING:
    from ..training.jobset import JobSetLauncher


def materialize(version: ModelVersion, paths: RunPaths) -> Path:
    """A full model folder for ``version``: itself, or (for a LoRA version) its merged weights.

    A LoRA version is an adapter on a base folder; training the next version needs the adapted
    model as a plain folder, written once next to the adapter (``v<k>-merged``).
    """
    if version.adapter is None:
        return model_folder(version)
    target = Path(version.adapter).with_name(Path(version.adapter).name + "-merged")
    if (target / "config.json").exists():
        return target
    from ..training.merge import merge_adapter

    with publishing(target) as tmp:
        merge_adapter(model_folder(version), Path(version.adapter), tmp)
    return target


def checkpoint_dir(paths: RunPaths, role: str, version: int) -> Path:
    """Where the training of ``role`` v<version> keeps its step checkpoints until it is published."""
    return paths.root / "checkpoints" / f"{role}-v{version}"


Trainer = Literal["preference", "sft"]
"""What a training job runs: preference optimisation (the actor's DPO family) or supervised
fine-tuning (the refiner's RFT, and stage 0 of either role)."""

_LAUNCH_ROLE: dict[Trainer, str] = {"preference": "actor", "sft": "refiner"}
"""The name ``workers.training.launch`` gives each trainer (its ``--role``)."""


def train_version(
    trainer: Trainer,
    train_fn: Callable[..., dict[str, Any]],
    start_from: Path,
    data_file: Path,
    records: list[dict],
    settings: TrainCommon,
    out_dir: Path,
    seed: int,
    checkpoints: Path,
    on_step: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    """Train into ``out_dir``, in this process or launched on ``settings.num_processes`` processes.

    A checkpoint a kill cut off mid-save is removed first, so the run resumes from a complete one.
    """
    from ..training.launch import Machines, launch_job, needs_launch
    from ..training.outcome import prune_incomplete

    machines = Machines.from_env()
    if machines is None or machines.machine_rank == 0:
        prune_incomplete(checkpoints)
    if needs_launch(settings, machines):
        job = {
            "model_path": str(start_from),
            "data_file": str(data_file),
            "config": settings.model_dump(mode="json"),
            "out_dir": str(out_dir),
            "seed": seed,
            "checkpoint_dir": str(checkpoints),
        }
        return launch_job(_LAUNCH_ROLE[trainer], job, checkpoints, on_step, machines)
    return train_fn(
        start_from, records, settings, out_dir, seed=seed, on_step=on_step, checkpoint_dir=checkpoints
    )


def version_metadata(
    role: str,
    version: int,
    parent: ModelVersion,
    objective: str,
    data_file: str,
    records: int,
    settings: TrainCommon,
    *,
    metrics: dict[str, Any] | None = None,
    base_model: str | None = None,
    alias_reason: str | None = None,
    launch: bool = True,
) -> dict[str, Any]:
    """``spar_version.json`` of ``role`` v<version> (validated by ``write_metadata``): the one builder.

    ``alias_reason``: nothing was trained, the version is its parent's weights. ``launch``: record
    how the training was launched (stage 0's records never held it; kept so its files do not change).
    """
    meta: dict[str, Any] = {
        "role": role,
        "version": f"v{version}",
        "parent": version_label(parent),
        "objective": objective,
        "data": {"file": data_file, "sha256": file_sha256(Path(data_file)), "records": records},
        "hyperparameters": settings.model_dump(mode="json"),
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    if alias_reason is not None:
        return meta | {"alias_of": parent.version, "reason": alias_reason}
    meta |= {
        "metrics": metrics or {},
        "adapter": settings.lora is not None,
        "base_model": base_model if settings.lora is not None else None,
    }
    if launch:
        meta |= {"distributed": settings.distributed, "num_processes": settings.num_processes}
    return meta


def _data_file(ctx: StageContext, data_name: str) -> Path:
    """The file a training stage learns from: the IOPO groups shard, or an assembled data file."""
    if data_name == "iopo_groups":
        return ctx.paths.shard(ctx.iteration, "iopo_groups", 0)
    return ctx.paths.data_file(ctx.iteration, data_name)


def _train(
    ctx: StageContext,
    role: str,
    data_name: str,
    settings: TrainCommon,
    trainer: Trainer,
    train_fn: Callable[..., dict[str, Any]],
    objective: str,
) -> ShardOutput:
    from ..training.jobset import JobSetLauncher
    from ..training.launch import Machines

    paths, spec, config = ctx.paths, ctx.spec, ctx.config
    parent = ctx.version(role)
    target = version_dir(paths, role, spec.iteration + 1)
    checkpoints = checkpoint_dir(paths, role, spec.iteration + 1)
    done = read_metadata(target)
    machines = Machines.from_env()
    if done is None and machines is not None and machines.machine_rank != 0:
        return _train_as_other_node(
            ctx, role, data_name, settings, trainer, train_fn, parent, checkpoints, machines
        )
    if done is None:
        data_file = _data_file(ctx, data_name)
        if not data_file.exists():
            producer = "iopo_groups" if data_name == "iopo_groups" else "assemble"
            raise FileNotFoundError(
                f"{data_file} is missing: run the '{producer}' stage of iteration {spec.iteration}"
            )
        check_trackers(settings, f"train_{role}")  # a missing tracker package: before any work
        records = list(read_jsonl(data_file))
        launcher = JobSetLauncher.from_env() if machines is None else None  # a node never hands on
        if records and launcher is not None:
            return _train_on_jobset(ctx, role, settings, launcher)
        with publishing(target) as tmp:
            describe = partial(
                version_metadata,
                role,
                spec.iteration + 1,
                parent,
                objective,
                str(data_file),
                len(records),
                settings,
            )
            if not records:
                meta = describe(alias_reason=f"no training records in {data_name}")
            else:
                ctx.engines.release()  # inference engines give their memory to the trainer
                start_from = materialize(parent, paths)
                label = f"training {role} ({objective}) steps"
                on_step = None if ctx.progress is None else partial(ctx.report, label)
                metrics = train_version(
                    trainer,
                    train_fn,
                    start_from,
                    data_file,
                    records,
                    settings,
                    tmp,
                    config.seed,
                    checkpoints,
                    on_step,
                )
                meta = describe(metrics=metrics, base_model=str(start_from))
            write_metadata(tmp, meta)
            check_rebuilt(paths, role, spec.iteration + 1, tmp)  # after `spar unpack`: the same weights
            card_for_version(paths, config, role, spec.iteration + 1, folder=tmp)  # published with it
        done = read_metadata(target)
        assert done is not None
    return _published(ctx, role, parent, checkpoints, done)


def _published(
    ctx: StageContext, role: str, parent: ModelVersion, checkpoints: Path, done: VersionMetadata
) -> ShardOutput:
    """The stage's result once version t+1 is published (by this worker or by node 0 of a JobSet),
    pushed to the hub first when the config has ``hub:`` (a retried job pushes what it did not)."""
    shutil.rmtree(checkpoints, ignore_errors=True)  # published: the step checkpoints have served
    new = ctx.version(role, ctx.iteration + 1)
    pushed = push_version(ctx.paths, ctx.config, role, ctx.iteration + 1)
    metrics = done.metrics
    return ShardOutput(
        counts=TrainCounts(records=done.data.records, trained=int(done.alias_of is None)).as_record(),
        models={role: version_label(parent), f"{role}_new": version_label(new)},
        metrics={k: v for k, v in metrics.items() if k != "loss_curve"}
        | {"loss_curve": metrics.get("loss_curve", [])}
        | ({"hub": [pushed.as_record()]} if pushed is not None else {}),
    )


def _train_on_jobset(
    ctx: StageContext, role: str, settings: TrainCommon, launcher: JobSetLauncher
) -> ShardOutput:
    """Hand the stage to a JobSet (``SPAR_TRAIN_LAUNCHER=jobset``) and report what node 0 published.

    The JobSet's pods run this same stage (``workers.training.node``); node 0 publishes version t+1
    on the shared volume, so this worker only reads it: the version is written once, by one process.
    """
    from ..training.jobset import KubeApi, run_stage
    from ..training.launch import TrainingLaunchError

    paths, spec = ctx.paths, ctx.spec
    parent = ctx.version(role)
    target = version_dir(paths, role, spec.iteration + 1)
    checkpoints = checkpoint_dir(paths, role, spec.iteration + 1)
    ctx.engines.release()  # nothing trains here, but the worker holds no engine while it waits
    env = {"SPAR_RUN_DIR": str(paths.root), "SPAR_ITERATION": str(spec.iteration), "SPAR_STAGE": spec.stage}
    name = run_stage(
        launcher, KubeApi.from_env(), env, settings.num_processes, checkpoints / "progress.json", ctx.progress
    )
    done = read_metadata(target)
    if done is None:
        raise TrainingLaunchError(f"JobSet {name} completed but node 0 published no version at {target}")
    return _published(ctx, role, parent, checkpoints, done)


def _train_as_other_node(
    ctx: StageContext,
    role: str,
    data_name: str,
    settings: TrainCommon,
    trainer: Trainer,
    train_fn: Callable[..., dict[str, Any]],
    parent: ModelVersion,
    checkpoints: Path,
    machines: Any,
) -> ShardOutput:
    """A node other than node 0 of a multi-node job: its processes train with node 0's, and node 0
    alone publishes the version (global rank 0 writes the model and metrics into node 0's staging
    folder). This node's own output folder is scratch; nothing of the run is written here."""
    data_file = _data_file(ctx, data_name)
    records = list(read_jsonl(data_file))
    if records:
        scratch = checkpoints / f"node-{machines.machine_rank}-out"
        start_from = materialize(parent, ctx.paths)
        train_version(
            trainer,
            train_fn,
            start_from,
            data_file,
            records,
            settings,
            scratch,
            ctx.config.seed,
            checkpoints,
            None,
        )
        shutil.rmtree(scratch, ignore_errors=True)
    return ShardOutput(
        counts=TrainCounts(records=len(records), trained=0).as_record(),
        models={role: version_label(parent)},
        metrics={"machine_rank": machines.machine_rank, "num_machines": machines.num_machines},
    )


def run_train_actor(ctx: StageContext) -> ShardOutput:
    from ..training.actor import train_actor

    cfg = ctx.config.train_actor
    data = "iopo_groups" if cfg.objective == "iopo" else "pairs.jsonl"
    return _train(ctx, "actor", data, cfg, "preference", train_actor, cfg.objective)


def run_train_refiner(ctx: StageContext) -> ShardOutput:
    from ..training.refiner import train_refiner

    return _train(ctx, "refiner", "rft.jsonl", ctx.config.train_refiner, "sft", train_refiner, "rft")


def run_init(ctx: StageContext) -> ShardOutput:
    """Stage 0: SFT of the configured models into v0 on the given datasets (once per run)."""
    from shared.prompts import PromptFileError

    from ..training.refiner import train_refiner

    paths, config = ctx.paths, ctx.config
    assert config.init is not None, "the init stage runs only when the config has `init`"
    counts: dict[str, float] = {}
    models: dict[str, str] = {}
    pushes: list[dict] = []
    for role, data, settings in (
        ("actor", config.init.actor_data, config.init.actor),
        ("refiner", config.init.refiner_data, config.init.refiner),
    ):
        if data is None:
            continue
        target = version_dir(paths, role, 0)
        if read_metadata(target) is None:
            base = ctx.version(role, 0)  # the configured model, since v0 is absent
            check_trackers(settings, f"init.{role}")
            records = list(read_jsonl(Path(data)))
            bad = [i + 1 for i, r in enumerate(records) if not isinstance(r.get("messages"), list)]
            if bad or not records:
                raise PromptFileError(
                    data, [(n, "expected {'messages': [...]}") for n in bad] or [(0, "empty")]
                )
            ctx.engines.release()
            with publishing(target) as tmp:
                on_step = None if ctx.progress is None else partial(ctx.report, f"stage 0: SFT {role}")
                metrics = train_version(
                    "sft",
                    train_refiner,
                    model_folder(base),
                    Path(data),
                    records,
                    settings,
                    tmp,
                    config.seed,
                    checkpoint_dir(paths, role, 0),
                    on_step,
                )
                meta = version_metadata(
                    role,
                    0,
                    base,
                    "sft",
                    data,
                    len(records),
                    settings,
                    metrics=metrics,
                    base_model=str(base.path),
                    launch=False,
                )
                write_metadata(tmp, meta)
                check_rebuilt(paths, role, 0, tmp)
                card_for_version(paths, config, role, 0, folder=tmp)
        shutil.rmtree(checkpoint_dir(paths, role, 0), ignore_errors=True)
        meta = read_metadata(target)
        assert meta is not None
        counts[f"{role}_records"] = meta.data.records
        models[f"{role}_new"] = version_label(ctx.version(role, 0))
        pushed = push_version(paths, config, role, 0)
        if pushed is not None:
            pushes.append(pushed.as_record())
    return ShardOutput(counts=counts, models=models, metrics={"hub": pushes} if pushes else {})
