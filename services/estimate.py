"""What a run will cost, per stage, before it starts: ``spar run --dry-run``.

Two sources of rates, in this order:

1. **recorded** -- every finished ``spar run`` writes what each stage cost per prompt (generations,
   tokens, seconds per token, seconds per training step, engine loads) to
   ``$SPAR_CACHE_DIR/estimates/<models>.json``, keyed by the models and engines it used. A later dry
   run of the same models on this machine scales those numbers by its own prompt count and
   settings. This is the accurate source: it knows how often the judge fails an answer and how
   long trees grow, which nothing short of running the models can tell.
2. **calibrated** -- without a record, the dry run loads each configured engine, times one batch of
   short generations (seconds per generated token at the stage's batch size, and the load itself)
   and one forward+backward pass of the model, then multiplies by counts derived from the config.
   The counts that depend on the model's answers (negatives, tree expansions, pairs) are then
   *assumptions*, stated in the output (:data:`ASSUMED`).

Why both: the first run of a new model has only the second; every run after it has the first.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.config import RunConfig
from shared.stages import pipeline

GENERATING = ("sample", "judge", "refine")
TRAINING = ("train_actor", "train_refiner")
ASSUMED = {"negative_rate": 0.5, "tree_success": 0.5, "fill": 1.0}
"""Without a record: half the answers fail the judge, half the trees succeed, and every generation
runs to its token limit (so tokens and time are upper-bound-ish on the generation side)."""
CAL_TOKENS = 32
"""New tokens per calibration generation: long enough to time decoding, short enough for seconds."""


class StageEstimate(BaseModel):
    """One stage of one iteration: what it is expected to cost."""

    iteration: int
    stage: str
    generations: int = Field(
        0, description="Completions the engine produces (engine calls, counted per answer)."
    )
    tokens: int = Field(0, description="Generated tokens.")
    steps: int = Field(0, description="Optimizer steps (training stages).")
    seconds: float = Field(0.0, description="Wall time, engine or model load included.")
    basis: Literal["recorded", "calibrated", "none"] = "none"


class Rates(BaseModel):
    """Per-unit costs of one machine and set of models, recorded or calibrated."""

    basis: Literal["recorded", "calibrated"]
    per_prompt: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per generating stage: generations per prompt, tokens per generation, s per token.",
    )
    train: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per training stage: steps per prompt, s per step, load s."
    )
    load_s: float = Field(0.0, description="Seconds to load one engine.")
    measured_at: float = 0.0


def models_key(config: RunConfig) -> str:
    """What the recorded rates depend on: each role's model, engine and engine settings."""
    parts = {
        role: getattr(config, role).model_dump(mode="json", exclude={"name"}) for role in ("actor", "refiner")
    }
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_key(config: RunConfig) -> str:
    """What a recorded run's per-prompt counts also depend on: the models, and the settings that
    decide how many generations a prompt costs (answers per prompt, the judge backend and its votes,
    the search's shape, the token limits). A record of an LLM-judged run must not price a
    verifier-judged one, whose judgments cost no generation."""
    parts = {
        "models": models_key(config),
        "sample": config.sample.model_dump(mode="json"),
        "judge": config.judge.model_dump(mode="json"),
        "search": config.search.model_dump(mode="json"),
    }
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(config: RunConfig, cache_dir: Path) -> Path:
    return cache_dir / "estimates" / f"{record_key(config)}.json"


def load_record(config: RunConfig, cache_dir: Path) -> Rates | None:
    path = record_path(config, cache_dir)
    try:
        return Rates.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or written by another version: calibrate instead
        return None


def calibration_path(config: RunConfig, cache_dir: Path) -> Path:
    """Where a dry run keeps its calibration of these models (the run's ETA falls back on it)."""
    return cache_dir / "estimates" / f"{models_key(config)}.calibrated.json"


def save_calibration(config: RunConfig, cache_dir: Path, rates: Rates) -> None:
    """Keep a dry run's calibration, so the run's ETA has rates for the stages it has not run yet
    (best effort: a read-only cache only costs that)."""
    out = calibration_path(config, cache_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(rates.model_dump_json(indent=2), encoding="utf-8")
        tmp.replace(out)
    except OSError:
        pass


def load_rates(config: RunConfig, cache_dir: Path) -> Rates | None:
    """The rates a dry run of these models would use without calibrating: recorded by an earlier run,
    else the calibration an earlier dry run saved; None when neither exists."""
    recorded = load_record(config, cache_dir)
    if recorded is not None:
        return recorded
    try:
        return Rates.model_validate_json(calibration_path(config, cache_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def record_run(run_root: Path, stage_wall: dict[tuple[int, str], float], cache_dir: Path) -> Path | None:
    """Keep what a finished run's stages cost per prompt, for the next dry run of these models.

    Only stages this invocation ran (``stage_wall``) count: a resumed run's skipped stages cost ~0 s
    and would make the record lie. Returns the file written, or None when nothing was run.
    """
    from shared.runtime.artifacts import RunPaths, read_json
    from shared.runtime.shards import load_config

    paths = RunPaths(run_root)
    config = load_config(paths)
    prompts = max(int(read_json(paths.config).get("prompts", 0)), 1)
    rates = Rates(basis="recorded", measured_at=time.time())
    loads: list[float] = []
    for line in _events(paths):
        if line.get("event") == "engine.load":
            loads.append(float(line.get("seconds", 0.0)))
    rates.load_s = sum(loads) / len(loads) if loads else 0.0
    for (iteration, stage), wall in stage_wall.items():
        manifest_path = paths.manifest(iteration, stage)
        if wall < 0.05 or not manifest_path.exists():
            continue
        manifest = read_json(manifest_path)
        engine = manifest.get("engine", {})
        if stage in GENERATING:
            completions = int(engine.get("completions", 0))
            tokens = int(engine.get("generated_tokens", 0))
            rates.per_prompt[stage] = {
                "generations": completions / prompts,
                "tokens_per_generation": tokens / completions if completions else 0.0,
                "s_per_token": wall / tokens if tokens else 0.0,
                "wall_per_prompt": wall / prompts,
            }
        elif stage in TRAINING:
            steps = _trained_steps(paths, stage, iteration)
            rates.train[stage] = {
                "steps_per_prompt": steps / prompts,
                "s_per_step": wall / steps if steps else 0.0,
                "wall": wall,
            }
    if not rates.per_prompt and not rates.train:
        return None
    out = record_path(config, cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(rates.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(out)
    return out


def _events(paths: Any) -> list[dict[str, Any]]:
    try:
        lines = paths.events.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _trained_steps(paths: Any, stage: str, iteration: int) -> int:
    """Optimizer steps of the version a training stage published (0 for an alias of its parent)."""
    from shared.runtime.artifacts import read_json

    role = "actor" if stage == "train_actor" else "refiner"
    meta = paths.root / "models" / role / f"v{iteration + 1}" / "spar_version.json"
    if not meta.exists():
        return 0
    record = read_json(meta)
    metrics = record.get("metrics", record)
    return int(metrics.get("steps", 0) or 0)


# ----- calibration ---------------------------------------------------------------------------------
def calibrate(config: RunConfig, prompts: list[str]) -> Rates:
    """Time one batch of short generations per distinct engine, and one training pass per role.

    The batch is as wide as the stage's would be (the HF engine's ``batch_size``, capped at 16 on
    CPU to keep the dry run short), because decoding time per token falls with the batch. The
    engine is closed again before returning; nothing under the runs folder is touched.
    """
    from shared.engine import GenerationRequest
    from shared.runtime.versions import ModelVersion
    from workers.engines import build_engine, close_engine

    rates = Rates(basis="calibrated", measured_at=time.time())
    loads: list[float] = []
    per_token: dict[str, float] = {}
    fills: dict[str, float] = {}
    for role in ("actor", "refiner"):
        model = getattr(config, role)
        if role == "refiner" and model.model_dump(exclude={"name"}) == config.actor.model_dump(
            exclude={"name"}
        ):
            per_token[role], fills[role] = per_token["actor"], fills["actor"]  # one engine serves both
            continue
        started = time.perf_counter()
        engine = build_engine(
            model, ModelVersion(role=role, version="v0", path=model.model), seed=config.seed
        )
        loads.append(time.perf_counter() - started)
        try:
            width = max(1, min(model.hf.batch_size if model.engine == "hf" else 16, 16))
            batch = [
                GenerationRequest(
                    messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
                    max_new_tokens=CAL_TOKENS,
                    temperature=0.7,
                    seed=config.seed + i,
                )
                for i in range(width)
            ]
            engine.generate(batch[:1])  # warm-up: first-call costs are part of the load, not decoding
            stats = getattr(engine, "stats", None)
            before = stats.generated_tokens if stats is not None else 0
            started = time.perf_counter()
            outputs = engine.generate(batch)
            seconds = time.perf_counter() - started
            tokens = (stats.generated_tokens - before) if stats is not None else 0
            if tokens <= 0:  # an engine without counters: words as a stand-in for tokens
                tokens = max(sum(len(c.split()) for out in outputs for c in out), 1)
            per_token[role] = seconds / tokens
            fills[role] = tokens / (CAL_TOKENS * len(batch))
        finally:
            close_engine(engine)
    rates.load_s = sum(loads) / len(loads)
    for stage, role in (("sample", "actor"), ("judge", "refiner"), ("refine", "refiner")):
        rates.per_prompt[stage] = {"s_per_token": per_token[role], "fill": fills[role]}
    for stage, role in (("train_actor", "actor"), ("train_refiner", "refiner")):
        rates.train[stage] = {"s_per_step": _step_seconds(config, role, preference=stage == "train_actor")}
    return rates


def _step_seconds(config: RunConfig, role: str, preference: bool) -> float:
    """One forward+backward of the role's model on a batch of the configured size (256 tokens a
    row, or ``max_length`` when shorter); a preference step costs about 3 of them (chosen and
    rejected through the policy, both again through the frozen reference without gradients)."""
    import torch
    from transformers import AutoModelForCausalLM

    from workers.models.registry import resolve_model

    section = config.train_actor if preference else config.train_refiner
    folder = resolve_model(getattr(config, role).model)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    rows = section.batch_size * section.grad_accum
    length = min(section.max_length, 256)
    ids = torch.randint(0, int(model.config.vocab_size), (rows, length))
    started = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    seconds = time.perf_counter() - started
    del model
    return seconds * (3.0 if preference else 1.0)


# ----- the estimate --------------------------------------------------------------------------------
def llm_judged_share(config: RunConfig, metadata: list[dict[str, Any]] | None = None) -> float:
    """The share of answers the refiner judges by generating (the rest the checker judges for free).

    ``judge.backend: llm`` generates every judgment, ``verifier`` none; ``verifier_then_llm`` checks
    the prompts that carry IFEval constraints and asks the refiner about the others, so its share is
    that of the prompts in ``metadata`` (one prompt record's metadata each) without constraints --
    unknown (None) counts as all, the upper bound.
    """
    from shared.judges import backend_of
    from shared.judges.verifier import ifeval_metadata

    backend = backend_of(config.judge)
    if backend.needs_metadata:
        return 0.0
    if not backend.checks_metadata or not metadata:
        return 1.0
    unchecked = sum(1 for m in metadata if ifeval_metadata(m) is None)
    return unchecked / len(metadata)


def _tree_generations(config: RunConfig, llm_share: float) -> float:
    """Generations one refinement tree costs on average, without a record: the search expands
    the root, then ``beam`` nodes per level, each with ``branching`` refinements, each judged
    ``votes`` times where the refiner judges (``llm_share``); an assumed half of the trees stop
    halfway (success)."""
    s = config.search
    expansions = 1 + s.beam * (s.max_depth - 1)
    if s.budget is not None:
        expansions = min(expansions, s.budget)
    full = expansions * s.branching * (1 + config.judge.votes * llm_share)
    return full * (1 - ASSUMED["tree_success"] / 2)


def estimate(
    config: RunConfig, n_prompts: int, rates: Rates, llm_share: float | None = None
) -> list[StageEstimate]:
    """Per (iteration, stage) of the run: generations, tokens, steps and seconds.

    ``llm_share``: the share of answers judged by the refiner (:func:`llm_judged_share`; None: what
    the judge backend alone says, all for ``verifier_then_llm``).
    """
    order = pipeline(config.stages, config.iterations, with_init=config.init is not None)
    out: list[StageEstimate] = []
    if llm_share is None:
        llm_share = llm_judged_share(config)
    k, votes = config.sample.num_responses, config.judge.votes
    negatives = n_prompts * k * ASSUMED["negative_rate"]
    limits = {
        "sample": config.sample.max_new_tokens,
        "judge": config.judge.max_new_tokens,
        "refine": config.search.max_new_tokens,
    }
    counts = {
        "sample": n_prompts * k,
        "judge": n_prompts * k * votes * llm_share,
        "refine": negatives * _tree_generations(config, llm_share),
    }
    pairs = negatives * ASSUMED["tree_success"]
    loads_done: set[str] = set()
    same_models = config.actor.model_dump() == config.refiner.model_dump()
    for iteration, stage in order:
        item = StageEstimate(iteration=iteration, stage=stage, basis=rates.basis)
        if stage in GENERATING:
            rate = rates.per_prompt.get(stage, {})
            if rates.basis == "recorded" and "generations" in rate:
                item.generations = round(rate["generations"] * n_prompts)
                item.tokens = round(item.generations * rate["tokens_per_generation"])
                item.seconds = rate["wall_per_prompt"] * n_prompts
            else:
                item.generations = round(counts[stage])
                item.tokens = round(item.generations * limits[stage] * rate.get("fill", ASSUMED["fill"]))
                # one engine load per model and iteration; one for both roles when they are the same
                # model (the local executor keeps the engine across stages until training)
                role = "actor" if stage == "sample" or same_models else "refiner"
                load = 0.0
                if item.generations and role + str(iteration) not in loads_done:  # no engine, no load
                    load = rates.load_s
                    loads_done.add(role + str(iteration))
                item.seconds = item.tokens * rate.get("s_per_token", 0.0) + load
        elif stage in TRAINING:
            rate = rates.train.get(stage, {})
            section = config.train_actor if stage == "train_actor" else config.train_refiner
            if rates.basis == "recorded" and "steps_per_prompt" in rate:
                item.steps = section.max_steps or math.ceil(rate["steps_per_prompt"] * n_prompts)
                item.seconds = (
                    item.steps * rate["s_per_step"] if rate["s_per_step"] else rate.get("wall", 0.0)
                )
            else:
                examples = pairs if stage == "train_actor" else pairs * (1 + votes)
                per_step = section.batch_size * section.grad_accum
                item.steps = section.max_steps or max(1, math.ceil(section.epochs * examples / per_step))
                item.seconds = item.steps * rate.get("s_per_step", 0.0) + rates.load_s
        else:
            item.basis = "none"  # assemble, eval, init stages: not estimated (seconds or unknown)
        out.append(item)
    return out


def render(estimates: list[StageEstimate], rates: Rates) -> str:
    """The dry run's table, with where the numbers came from."""
    lines = [f"{'stage':<24}{'generations':>12}{'tokens':>12}{'steps':>8}{'seconds':>10}"]
    for e in estimates:
        lines.append(
            f"{f'iter {e.iteration} {e.stage}':<24}{e.generations:>12}{e.tokens:>12}{e.steps:>8}"
            f"{(f'{e.seconds:.1f}' if e.basis != 'none' else '-'):>10}"
        )
    total = sum(e.seconds for e in estimates)
    lines.append(
        f"{'total':<24}{sum(e.generations for e in estimates):>12}"
        f"{sum(e.tokens for e in estimates):>12}{sum(e.steps for e in estimates):>8}{total:>10.1f}"
    )
    if rates.basis == "recorded":
        lines.append("rates: recorded from an earlier run of these models on this machine, scaled by prompts")
    else:
        lines.append(
            "rates: calibrated now (one batch of short generations per engine, one forward+backward "
            f"per model); assumed {ASSUMED['negative_rate']:.0%} negatives, {ASSUMED['tree_success']:.0%} "
            "tree success, generations to the token limit"
        )
    return "\n".join(lines)
