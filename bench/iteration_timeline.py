"""How long an iteration takes, and how idle each role's pool is, in serial vs graph order (issue 26).

Two parts:

* ``service`` -- a real service run on the tiny model (Redis, the API, ONE worker per role, as
  ``tests/service_harness.py`` starts them): the same config run in graph order (the scheduler's
  default) and in serial order (``SPAR_SCHEDULE_ORDER=serial``, one stage at a time), on the same
  warm workers. Everything is measured from the shard completion records (``started_at`` and
  ``finished_at`` of every shard): the run's span, the span per iteration, and each pool's idle
  fraction = 1 - (time its worker was inside a shard) / span. The two runs' data files are compared
  byte for byte (the graph changes when a stage runs, never what it writes).
* ``simulate`` -- the paper's scale: stage costs from per-token rates and SPaR's sizes (K = 5
  samples, 5 votes, the tree defaults of ``shared/config.py``: branching 3, beam 2, depth 3; an 8B
  model on N GPUs per role), played through a discrete-event model of the scheduler: shards go to
  free GPUs of their pool in the order they are enqueued; a training takes the whole train pool
  (one multi-GPU job), ``eval`` one actor GPU. Serial order enqueues a stage when the previous one is
  complete, graph order when its inputs are (``shared.stages.dependencies``, the scheduler's own
  edges). The rates and sizes are flags; their defaults are stated assumptions, not measurements
  of an 8B model (this machine has no GPU): pass measured ones where you have them.

    python bench/iteration_timeline.py service [--prompts 24] [--iterations 2] [--train-steps 8]
    python bench/iteration_timeline.py simulate [--gpus 8] [--prompts 10000] [--iterations 3]
    python bench/iteration_timeline.py all
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from shared.stages import STAGE_DEFS, dependencies, pipeline  # noqa: E402

ROLES = ("actor", "refiner", "train")


# ----- measuring a run from its shard records -----------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """One shard's time on a worker, from its completion record."""

    role: str
    iteration: int
    stage: str
    start: float
    end: float


def shard_intervals(run_dir: Path) -> list[Interval]:
    """Every shard of the run as (pool, iteration, stage, start, end), from its ``.done.json``.

    ``started_at`` is when the worker took the shard up (engine loads included); a record older
    than that field falls back to ``finished_at - seconds``.
    """
    out = []
    for done in sorted(run_dir.glob("iter_*/*/shard_*.done.json")):
        record = json.loads(done.read_text())
        spec = record["spec"]
        end = float(record["finished_at"])
        start = record.get("started_at")
        start = float(start) if start is not None else end - float(record["seconds"])
        out.append(Interval(STAGE_DEFS[spec["stage"]].queue, spec["iteration"], spec["stage"], start, end))
    return out


def busy_seconds(spans: Iterable[tuple[float, float]]) -> float:
    """The length of the union of the spans (overlapping shards of one pool count once per worker
    only if the caller passes one worker's spans; with one worker per role they never overlap)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


@dataclass
class Timeline:
    """A run's measured schedule: its span, each iteration's span, each pool's idle fraction."""

    span: float
    iterations: dict[int, float]
    idle: dict[str, float]
    overlaps: int
    """Pairs of shards of DIFFERENT stages that ran at the same time."""


def timeline(intervals: list[Interval], workers: dict[str, int] | None = None) -> Timeline:
    """Idle fraction of a pool = 1 - busy / (workers x span), span = first start to last end."""
    workers = workers or {role: 1 for role in ROLES}
    begin = min(i.start for i in intervals)
    span = max(i.end for i in intervals) - begin
    per_iteration = {}
    for t in sorted({i.iteration for i in intervals}):
        mine = [i for i in intervals if i.iteration == t]
        per_iteration[t] = max(i.end for i in mine) - min(i.start for i in mine)
    idle = {}
    for role in ROLES:
        spans = [(i.start, i.end) for i in intervals if i.role == role]
        busy = busy_seconds(spans) if workers[role] == 1 else sum(e - s for s, e in spans)
        idle[role] = 1.0 - busy / (workers[role] * span) if span > 0 else 0.0
    overlaps = sum(
        1
        for k, a in enumerate(intervals)
        for b in intervals[k + 1 :]
        if (a.iteration, a.stage) != (b.iteration, b.stage) and a.start < b.end and b.start < a.end
    )
    return Timeline(span, per_iteration, idle, overlaps)


def stage_spans(intervals: list[Interval]) -> list[tuple[int, str, str, float, float]]:
    """Each stage's (iteration, name, pool, first start, last end), seconds from the run's start."""
    begin = min(i.start for i in intervals)
    spans: dict[tuple[int, str], list[Interval]] = {}
    for i in intervals:
        spans.setdefault((i.iteration, i.stage), []).append(i)
    return sorted(
        (t, name, mine[0].role, min(i.start for i in mine) - begin, max(i.end for i in mine) - begin)
        for (t, name), mine in spans.items()
    )


def data_digest(run_dir: Path, roots: Iterable[Path]) -> dict[str, str]:
    """SHA-256 of every data file of a run (shard outputs, pairs, rft, eval rows) and of every
    published weight file, with the run's own folder and data root replaced by fixed names (eval rows
    name the model folders they scored)."""
    out = {}
    for path in sorted(run_dir.glob("iter_*/*/*.jsonl")) + sorted(run_dir.glob("models/*/v*/*.safetensors")):
        data = path.read_bytes()
        for folder, name in [(run_dir, b"<run>")] + [(r, b"<data>") for r in roots]:
            for spelling in {str(folder), str(folder.resolve())}:
                data = data.replace(spelling.encode(), name)
        out[str(path.relative_to(run_dir))] = hashlib.sha256(data).hexdigest()
    return out


# ----- part (a): a service run, graph vs serial ---------------------------------------------------
def service_body(prompts_shard: int, iterations: int, train_steps: int) -> dict:
    from service_harness import tiny_run_body

    body = tiny_run_body(
        "timeline",
        seed=13,
        shard_size=prompts_shard,
        responses=4,
        votes=3,
        new_tokens=(24, 64, 64),
        train_steps=train_steps,
    )
    return body | {
        "iterations": iterations,
        "stages": ["sample", "judge", "refine", "assemble", "train_actor", "train_refiner", "eval"],
        "evaluation": {"ifeval_limit": 8, "max_new_tokens": 24, "judge_data": "judge.jsonl"},
    }


def service_root(tmp: Path, prompts: int) -> Path:
    from service_harness import data_root, variant_prompts

    from workers.models.tiny import tiny_model_cached

    root = data_root(tmp, tiny_model_cached(REPO / ".cache" / "models"), variant_prompts(prompts))
    items = [("hello", "HELLO"), ("yes", "YES"), ("tea", "TEA")]
    (root / "judge.jsonl").write_text(
        "".join(
            json.dumps({"input": f"Say {w} in lowercase.", "output_1": w, "output_2": up, "label": 1}) + "\n"
            for w, up in items
        )
    )
    return root


def measure_service(prompts: int, shard_size: int, iterations: int, train_steps: int) -> dict:
    """Run the same config in graph then serial order on one warm stack; the two timelines."""
    from service_harness import Stack, private_redis

    body = service_body(shard_size, iterations, train_steps)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="spar-timeline-") as tmp:
        root = service_root(Path(tmp), prompts)
        with private_redis(Path(tmp)) as url:
            stack = Stack(root=root, redis_url=url)
            try:
                stack.start_workers()
                digests = {}
                # a first run warms every worker (imports, engine code paths) and is not measured
                for order in ("warm-up", "serial", "graph"):
                    stack.env_extra["SPAR_SCHEDULE_ORDER"] = "serial" if order == "warm-up" else order
                    stack.start_api()
                    view, _ = stack.finish_run(body | {"iterations": 1} if order == "warm-up" else body, 1800)
                    run_dir = Path(view["run_dir"])
                    stack.stop_api()
                    if order == "warm-up":
                        continue
                    intervals = shard_intervals(run_dir)
                    results[order] = timeline(intervals)
                    results[f"{order}-stages"] = stage_spans(intervals)
                    digests[order] = data_digest(run_dir, [root])
                results["identical"] = digests["graph"] == digests["serial"] and bool(digests["graph"])
                results["files"] = len(digests["graph"])
            finally:
                stack.close()
    return results


def print_service(results: dict, prompts: int, shard_size: int, iterations: int, train_steps: int) -> None:
    print(
        f"(a) service, tiny model, one worker per role: {prompts} prompts in {-(-prompts // shard_size)} "
        f"shards, {iterations} iterations, {train_steps} training steps per role, eval on"
    )
    print(
        f"{'order':<8}{'run s':>8}{'s/iter':>8}  "
        + "".join(f"{'idle ' + r:>13}" for r in ROLES)
        + "  overlaps"
    )
    for order in ("serial", "graph"):
        t: Timeline = results[order]
        print(
            f"{order:<8}{t.span:>8.1f}{t.span / len(t.iterations):>8.1f}  "
            + "".join(f"{t.idle[r]:>13.2f}" for r in ROLES)
            + f"  {t.overlaps:>8}"
        )
    for order in ("serial", "graph"):
        print(f"{order} order, stage spans (s from the run's start):")
        for t, name, role, start, end in sorted(results[f"{order}-stages"], key=lambda x: x[3]):
            print(f"  iter {t} {name:<14}{role:<8}{start:>7.1f} -> {end:>6.1f}")
    s, g = results["serial"], results["graph"]
    print(f"graph / serial run time: {g.span / s.span:.3f}")
    print(
        f"outputs byte-identical across orders ({results['files']} data and weight files): "
        f"{results['identical']}"
    )


# ----- part (b): the paper's scale, simulated -----------------------------------------------------
@dataclass
class Sizes:
    """An iteration's work at the paper's scale (defaults: shared/config.py and docs/method.md, plus
    stated assumptions where the paper gives no number)."""

    prompts: int = 10_000
    """Prompts per iteration (assumption: the order of SPaR's prompt set)."""
    k: int = 5  # sample.num_responses
    votes: int = 5  # judge.votes
    branching: int = 3  # search.branching
    beam: int = 2  # search.beam
    depth: int = 3  # search.max_depth
    response_tokens: int = 400
    """Mean generated tokens per response (assumption; max_new_tokens is 2048)."""
    judgment_tokens: int = 250
    """Mean tokens per judgment (assumption)."""
    refinement_tokens: int = 600
    """Mean tokens per refiner reply: reflection plus the refined response (assumption)."""
    negative_share: float = 0.6
    """Prompts with a negative (judge.negatives_per_prompt = 1; assumption for an 8B actor)."""
    expansions: float = 2.5
    """Mean expansions per tree, early success included (assumption; the maximum is 1 + 2 x beam)."""
    pairs_share: float = 0.7
    """Trees that succeed and give a DPO pair (assumption)."""
    rft_examples: int = 9_500
    """The RFT mix at its caps (data.caps: 4000 + 1500 + 1000 + 500 + 2500)."""
    dpo_tokens: int = 1_200
    """Tokens per DPO pair: prompt + chosen + rejected."""
    rft_tokens: int = 1_500
    """Tokens per RFT example (a refinement example holds prompt, response, judgment, refinement)."""
    ifeval_prompts: int = 541
    llmbar_items: int = 419
    eval_tokens: int = 400


@dataclass
class Rates:
    """Per-GPU throughputs of an 8B model (assumptions unless measured ones are passed)."""

    generate: float = 2_500.0
    """Generated tokens/s per GPU, vLLM at a full batch, sampling and judging (prefix caching on)."""
    search: float = 1_800.0
    """Generated tokens/s per GPU in the tree search (smaller batches between steps)."""
    eval: float = 1_500.0
    """Generated tokens/s of the one-GPU eval shard (greedy IFEval, then the judge)."""
    train: float = 2_000.0
    """Trained tokens/s per GPU (full fine-tuning, ZeRO-3; DPO counts the reference pass too)."""
    assemble_s: float = 120.0
    """Assembly, on a train-pool CPU (one job, whole pool)."""


@dataclass
class SimStage:
    name: str
    role: str
    shards: int
    shard_seconds: float
    gang: bool = False
    """The job takes every GPU of its pool (a distributed training)."""


def stage_costs(sizes: Sizes, rates: Rates, gpus: int, shards: int) -> dict[str, SimStage]:
    """Seconds per shard of every stage of one iteration at these sizes and rates."""
    s = sizes
    negatives = s.prompts * s.negative_share
    sample = s.prompts * s.k * s.response_tokens / rates.generate
    judge = s.prompts * s.k * s.votes * s.judgment_tokens / rates.generate
    per_expansion = s.branching * (s.refinement_tokens + s.votes * s.judgment_tokens)
    refine = negatives * s.expansions * per_expansion / rates.search
    pairs = negatives * s.pairs_share
    train_actor = 3 * pairs * s.dpo_tokens / (rates.train * gpus)  # policy on 2 sequences + reference
    train_refiner = 3 * s.rft_examples * s.rft_tokens / (rates.train * gpus)  # forward + backward
    evaluation = (
        s.ifeval_prompts * s.eval_tokens * 2 + s.llmbar_items * s.votes * 2 * s.judgment_tokens * 2
    ) / rates.eval
    return {
        "sample": SimStage("sample", "actor", shards, sample / shards),
        "judge": SimStage("judge", "refiner", shards, judge / shards),
        "refine": SimStage("refine", "refiner", shards, refine / shards),
        "assemble": SimStage("assemble", "train", 1, rates.assemble_s, gang=True),
        "train_actor": SimStage("train_actor", "train", 1, train_actor, gang=True),
        "train_refiner": SimStage("train_refiner", "train", 1, train_refiner, gang=True),
        "eval": SimStage("eval", "actor", 1, evaluation),
    }


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    node: tuple[int, str] = field(compare=False)
    role: str = field(compare=False)
    gpus: int = field(compare=False)


def simulate(
    costs: dict[str, SimStage], iterations: int, gpus: int, order: str
) -> tuple[float, dict[str, float]]:
    """Play the scheduler through the stage graph: (makespan seconds, idle fraction per pool).

    Each pool has ``gpus`` GPUs; a shard takes one (a gang job all of them) and jobs start in the
    order they were enqueued (RQ queues are FIFO). ``serial`` enqueues a stage once the previous
    stage of the pipeline is complete, ``graph`` once every stage it reads is.
    """
    stages = [name for name in STAGE_DEFS if name in costs]
    nodes = list(pipeline(stages, iterations, with_init=False))
    deps = {n: dependencies(n[1], n[0], stages, False) for n in nodes}
    left = {n: costs[n[1]].shards for n in nodes}
    complete: set[tuple[int, str]] = set()
    enqueued: set[tuple[int, str]] = set()
    queues: dict[str, list[tuple[tuple[int, str], int]]] = {r: [] for r in ROLES}  # (node, shards left)
    free = {r: gpus for r in ROLES}
    busy = {r: 0.0 for r in ROLES}
    events: list[_Event] = []
    now, seq = 0.0, 0

    def enqueue_ready() -> None:
        for k, n in enumerate(nodes):
            if n in enqueued or n in complete:
                continue
            if order == "serial":
                if k > 0 and nodes[k - 1] not in complete:
                    return
            elif not all(d in complete for d in deps[n]):
                continue
            enqueued.add(n)
            queues[costs[n[1]].role].append((n, costs[n[1]].shards))

    def dispatch() -> None:
        nonlocal seq
        for role in ROLES:
            queue = queues[role]
            while queue:
                n, waiting = queue[0]
                c = costs[n[1]]
                need = gpus if c.gang else 1
                if free[role] < need:
                    break  # FIFO: nothing overtakes the head of the queue
                free[role] -= need
                busy[role] += need * c.shard_seconds
                seq += 1
                heapq.heappush(events, _Event(now + c.shard_seconds, seq, n, role, need))
                queue[0] = (n, waiting - 1)
                if waiting - 1 == 0:
                    queue.pop(0)

    enqueue_ready()
    dispatch()
    while events:
        event = heapq.heappop(events)
        now = event.at
        free[event.role] += event.gpus
        left[event.node] -= 1
        if left[event.node] == 0:
            complete.add(event.node)
            enqueue_ready()
        dispatch()
    if len(complete) != len(nodes):
        raise RuntimeError(f"the simulation stalled: {sorted(set(nodes) - complete)}")
    return now, {r: 1.0 - busy[r] / (gpus * now) for r in ROLES}


def print_simulation(sizes: Sizes, rates: Rates, gpus: int, iterations: int, shards: int) -> dict:
    costs = stage_costs(sizes, rates, gpus, shards)
    print(
        f"(b) simulated: 8B model, {gpus} GPUs per role, {sizes.prompts} prompts in {shards} shards, "
        f"K={sizes.k}, {sizes.votes} votes, tree {sizes.branching}/{sizes.beam}/{sizes.depth}, "
        f"{iterations} iterations"
    )
    print(
        "stage costs (GPU-hours on its pool): "
        + ", ".join(
            f"{c.name} {c.shards * c.shard_seconds * (gpus if c.gang else 1) / 3600:.1f}"
            for c in costs.values()
        )
    )
    out = {}
    print(f"{'order':<8}{'run h':>8}{'h/iter':>8}  " + "".join(f"{'idle ' + r:>13}" for r in ROLES))
    for order in ("serial", "graph"):
        span, idle = simulate(costs, iterations, gpus, order)
        out[order] = (span, idle)
        print(
            f"{order:<8}{span / 3600:>8.2f}{span / 3600 / iterations:>8.2f}  "
            + "".join(f"{idle[r]:>13.2f}" for r in ROLES)
        )
    print(f"graph / serial iteration time: {out['graph'][0] / out['serial'][0]:.3f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["service", "simulate", "all"])
    parser.add_argument("--prompts", type=int, default=None, help="service: 24; simulate: 10000")
    parser.add_argument("--shard-size", type=int, default=12, help="service: prompts per shard")
    parser.add_argument("--iterations", type=int, default=None, help="service: 2; simulate: 3")
    parser.add_argument("--train-steps", type=int, default=8, help="service: steps per training")
    parser.add_argument("--gpus", type=int, default=8, help="simulate: GPUs per role")
    parser.add_argument("--shards", type=int, default=64, help="simulate: prompt shards")
    for name, value in vars(Rates()).items():
        parser.add_argument(f"--rate-{name.replace('_', '-')}", type=float, default=value)
    args = parser.parse_args()
    if args.part in ("service", "all"):
        prompts, iterations = args.prompts or 24, args.iterations or 2
        results = measure_service(prompts, args.shard_size, iterations, args.train_steps)
        print_service(results, prompts, args.shard_size, iterations, args.train_steps)
    if args.part in ("simulate", "all"):
        sizes = Sizes(prompts=args.prompts or Sizes.prompts) if args.part == "simulate" else Sizes()
        rates = Rates(**{name: getattr(args, f"rate_{name}") for name in vars(Rates())})
        print_simulation(sizes, rates, args.gpus, args.iterations or 3, args.shards)


if __name__ == "__main__":
    main()
