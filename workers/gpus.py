"""How many GPUs a job needs, checked against the GPUs this worker sees before anything loads.

A ``tensor_parallel_size`` or ``num_processes`` larger than the pod's GPUs otherwise fails deep inside
vLLM or accelerate, minutes later and with an error that does not name the setting. The worker refuses
such a job at once with one line that names the setting, the GPUs it sees and the fix.

Only settings that would use GPUs count: on a worker without GPUs, ``engine: hf`` with ``device: auto``
and vLLM with ``device: auto`` run on the CPU, and so does training with several processes (gloo).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from pydantic import BaseModel

from shared.config import ModelConfig, RunConfig, TrainCommon
from shared.errors import GPUCountError
from shared.stages import stage

MACHINES_ENV = "SPAR_NUM_MACHINES"
"""Nodes a training job spans (set in the pods of a multi-node train job; 1 elsewhere)."""


def visible_gpus() -> int:
    """CUDA devices this process sees (after CUDA_VISIBLE_DEVICES and the pod's GPU limit)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def num_machines(env: dict[str, str] | None = None) -> int:
    """The nodes of this training job (``SPAR_NUM_MACHINES``, default 1)."""
    value = (os.environ if env is None else env).get(MACHINES_ENV, "1")
    if not value.isdigit() or int(value) < 1:
        raise GPUCountError(f"{MACHINES_ENV}={value!r}: a whole number >= 1 of nodes is required")
    return int(value)


def _engine_needs(where: str, model: ModelConfig, visible: int) -> Iterator[tuple[str, int, str]]:
    """(setting, GPUs it needs, its value) of the engine a role's model uses."""
    if model.engine == "vllm":
        device = model.vllm.device
        if device == "cuda" or (device == "auto" and visible > 0):
            tp = model.vllm.tensor_parallel_size
            yield f"{where}.vllm.tensor_parallel_size", tp, str(tp)
        return
    device = model.hf.device
    if device.startswith("cuda"):
        index = device.partition(":")[2]
        needed = int(index) + 1 if index.isdigit() else 1
        yield f"{where}.hf.device", needed, device


def _training_sections(config: RunConfig, sections: list[str]) -> Iterator[tuple[str, TrainCommon]]:
    """The training settings among a stage's config sections (``init`` holds two)."""
    for name in sections:
        value = getattr(config, name)
        if isinstance(value, TrainCommon):
            yield name, value
        elif isinstance(value, BaseModel):
            for field in type(value).model_fields:
                sub = getattr(value, field)
                if isinstance(sub, TrainCommon):
                    yield f"{name}.{field}", sub


def gpu_needs(
    config: RunConfig, stage_name: str, visible: int, machines: int = 1
) -> list[tuple[str, int, str]]:
    """(setting, GPUs it needs on this worker, its value) for every GPU-using setting of the stage.

    Inference stages: the engines of the roles the stage uses. Training stages: processes per node
    (``num_processes`` over ``machines`` nodes), when this worker has GPUs to train on.
    """
    definition = stage(stage_name)
    sections = list(definition.hash_sections.values())
    if definition.queue != "train":
        return [
            need
            for role in ("actor", "refiner")
            if role in sections
            for need in _engine_needs(role, getattr(config, role), visible)
        ]
    if visible == 0:
        return []  # training on the CPU: several processes run over gloo
    needs = []
    for where, train in _training_sections(config, sections):
        per_node = -(-train.num_processes // machines)
        shown = f"{train.num_processes}" + (f" over {machines} nodes" if machines > 1 else "")
        needs.append((f"{where}.num_processes", per_node, shown))
    return needs


def check_gpu_counts(config: RunConfig, stage_name: str, visible: int | None = None) -> None:
    """Raise :class:`GPUCountError` (one line) when a setting of the stage needs more GPUs than seen."""
    visible = visible_gpus() if visible is None else visible
    machines = num_machines()
    for setting, needed, value in gpu_needs(config, stage_name, visible, machines):
        if needed > visible:
            raise GPUCountError(
                f"{setting}={value} needs {needed} GPU(s) on this worker but it sees {visible} "
                f"(CUDA_VISIBLE_DEVICES / the pod's nvidia.com/gpu limit): lower {setting} or give the "
                f"{stage(stage_name).queue} workers {needed} GPUs"
            )
