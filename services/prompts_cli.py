"""``spar prompts``: build prompt files.

    spar prompts synth --n N [--seed S] [--max-constraints K] [--id-prefix P] --out FILE

Writes ``N`` synthesized prompts with IFEval-style, programmatically checkable constraints
(:mod:`shared.evaluation.synth`), one JSON object per line: ``id``, ``prompt``,
``instruction_id_list``, ``kwargs``. The file is a normal prompts file for ``spar run`` and its
metadata lets the verifier judge (:mod:`shared.judges.verifier`) label responses without an
LLM. Kept apart from ``services/cli.py`` (like ``eval_cli``) so it can grow on its own; the main
parser wires it in with :func:`add_prompts_commands` and dispatches with :func:`run_prompts_command`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from services.cli_types import positive_int
from services.console import print_error


def _constraints(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 4:
        raise argparse.ArgumentTypeError(f"must be between 1 and 4, got {value}")
    return value


def add_prompts_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``prompts synth`` to the ``spar`` sub-command parsers; return the ``prompts`` parser."""
    prompts = subparsers.add_parser("prompts", help="build prompt files (synthesized checkable prompts)")
    psub = prompts.add_subparsers(dest="prompts_command", required=True)
    synth = psub.add_parser(
        "synth", help="prompts with IFEval-style constraints a program can check (verifier judge)"
    )
    synth.add_argument("--n", type=positive_int, required=True, help="number of prompts")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same file")
    synth.add_argument("--max-constraints", type=_constraints, default=4, help="1..4 constraints per prompt")
    synth.add_argument("--id-prefix", default="synth", help="ids are <prefix>-0000, <prefix>-0001, ...")
    synth.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    synth.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a prompt file (JSONL with 'prompt') whose prompts must not be drawn: keeps a validation "
        "split disjoint from training (repeatable)",
    )
    return prompts


def run_prompts_command(args: argparse.Namespace, console: Any = None) -> int:
    """Dispatch ``spar prompts ...``; returns the process exit code (2 for an error the user can fix)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    try:
        if args.prompts_command == "synth":
            return _cmd_synth(args, console)
    except (ValueError, RuntimeError, OSError, ImportError) as exc:
        print_error(console, str(exc))
        return 2
    print_error(console, f"unknown prompts command {args.prompts_command!r}")
    return 2


def _cmd_synth(args: argparse.Namespace, console: Any) -> int:
    from shared.evaluation.synth import synthesize, write_jsonl

    started = time.perf_counter()
    excluded: set[str] = set()
    for path in args.exclude:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            excluded.update(json.loads(line)["prompt"] for line in lines if line.strip())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"--exclude {path}: not a prompt file (JSONL with a 'prompt' per line): {exc}"
            ) from exc
    records = synthesize(
        args.n,
        seed=args.seed,
        max_constraints=args.max_constraints,
        id_prefix=args.id_prefix,
        exclude=excluded,
    )
    count = write_jsonl(records, args.out)
    usage = Counter(i for r in records for i in r["instruction_id_list"])
    console.print(
        f"wrote {count} prompts to {args.out} in {time.perf_counter() - started:.1f} s: "
        f"{sum(usage.values())} constraints over {len(usage)} types "
        f"({min(usage.values())}-{max(usage.values())} each)"
    )
    return 0
