"""The ``spar`` command line.

    spar run CONFIG.yaml [--runs-dir runs] [--run-id ID]   create a run and execute it locally
    spar run --resume RUN_DIR                               finish an interrupted run
    spar run ARM.yaml --fork RUN_DIR                        a new run reusing RUN_DIR's shared stages
    spar models prepare smollm2 --out DIR                   SmolLM2-135M-Instruct as an HF folder
    spar models tiny --out DIR                              the offline tiny test model
    spar eval ifeval --model PATH [--limit N]               IFEval accuracies (strict/loose)
    spar eval judge --model PATH --data FILE                pairwise judge accuracy (LLMBar format)
    spar prompts synth --n N [--seed S] --out FILE          synthesized prompts with checkable constraints
    spar hub push RUN_DIR                                   push versions not pushed yet (config `hub:`)
    spar api | spar worker --role R                         the distributed service

Errors a user can fix (bad config, malformed prompt lines, missing model) are printed as one clear
message with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from services.console import print_error
from shared.errors import SparError
from shared.runtime.settings import apply_hf_environment

apply_hf_environment()  # before anything imports transformers or trl


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spar", description="SPaR self-play with tree-search refinement")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="create a run from a config and execute it locally")
    run.add_argument("config", nargs="?", type=Path, help="run config (YAML)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an existing run directory")
    run.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="where runs are created (default: runs)"
    )
    run.add_argument(
        "--fork",
        type=Path,
        metavar="RUN_DIR",
        help="reuse RUN_DIR's finished stages that this config leaves identical (ablations)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config setting, e.g. --set train_actor.learning_rate=2e-5 (repeatable)",
    )
    run.add_argument("--run-id", help="run id (default: <name>-<UTC time>-<random>)")
    run.add_argument("--cache-dir", type=Path, help="model cache (default: $SPAR_CACHE_DIR or ~/.cache/spar)")
    run.add_argument("--log-json", action="store_true", help="also print structured JSON logs on stderr")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in CI logs)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check every path and model, print the resolved config and an estimate of engine calls, "
        "tokens and time per stage; write no run",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="show vLLM's and DeepSpeed's INFO logs (default: WARNING and up)",
    )

    api = sub.add_parser("api", help="serve the REST API (and the scheduler) with uvicorn")
    api.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)",
    )
    api.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default: 8000)")

    worker = sub.add_parser("worker", help="serve one role's queue (RQ worker that keeps its model loaded)")
    worker.add_argument(
        "--role",
        choices=["actor", "refiner", "train"],
        required=True,
        help="which queue to serve: actor (sampling, eval), refiner (judging, search), train",
    )
    worker.add_argument(
        "--queue-url", help="Redis URL (default: $SPAR_REDIS_URL or redis://127.0.0.1:6379/0)"
    )
    worker.add_argument(
        "--heartbeat-ttl", type=int, default=30, help="seconds before a dead worker's job is retried"
    )
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--name", help="worker name prefix (default: <role>-<host>-<pid>)")

    probe = sub.add_parser(
        "worker-probe", help="exit 0 when a worker of this host and role is alive (k8s probe)"
    )
    probe.add_argument(
        "--role",
        choices=["actor", "refiner", "train"],
        required=True,
        help="the role of the worker to look for",
    )
    probe.add_argument("--queue-url", help="Redis URL (default: $SPAR_REDIS_URL or redis://127.0.0.1:6379/0)")

    from services.eval_cli import add_eval_commands

    add_eval_commands(sub)

    from services.prompts_cli import add_prompts_commands

    add_prompts_commands(sub)

    report = sub.add_parser("report", help="write a self-contained report (HTML or Markdown) of runs")
    report.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories (several: arms compared)"
    )
    report.add_argument("--out", type=Path, help="output file (default: RUN_DIR/report.html or .md)")
    report.add_argument("--format", choices=["html", "md"], default="html", help="html (default) or md")
    report.add_argument(
        "--export-generations",
        type=Path,
        metavar="DIR",
        help="also write each evaluated version's IFEval/validation responses and judge outputs to DIR "
        "(gzip JSONL that Google's IFEval code re-scores; a folder per run when several are given)",
    )

    status = sub.add_parser(
        "status", help="where runs stand (stage, shards, items kept, ETA, last eval), from their directories"
    )
    status.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories")
    status.add_argument("--json", action="store_true", help="print JSON (one object per run) for scripts")

    pack = sub.add_parser(
        "pack",
        help="archive a run without its model weights (MBs, not GBs) to continue it on another machine",
    )
    pack.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    pack.add_argument("--out", type=Path, help="archive to write (default: ./<run id>.tar.gz)")
    unpack = sub.add_parser(
        "unpack",
        help="lay out a packed run; `spar run --resume` then retrains its versions and checks their weights",
    )
    unpack.add_argument("archive", type=Path, metavar="ARCHIVE", help="the .tar.gz `spar pack` wrote")
    unpack.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="where the run goes (default: runs)"
    )

    hub = sub.add_parser("hub", help="model versions and a Hugging Face Hub (the config's `hub:`)")
    hsub = hub.add_subparsers(dest="hub_command", required=True)
    push = hsub.add_parser(
        "push", help="push a run's published versions that are not pushed yet (failed pushes again)"
    )
    push.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")

    models = sub.add_parser("models", help="build or prepare local model folders")
    msub = models.add_subparsers(dest="models_command", required=True)
    prep = msub.add_parser("prepare", help="prepare a built-in model as a Hugging Face folder")
    prep.add_argument("name", choices=["smollm2"], help="built-in model to prepare")
    prep.add_argument("--out", type=Path, required=True, help="folder to write the model into")
    tiny = msub.add_parser("tiny", help="build the offline tiny model (seconds)")
    tiny.add_argument("--out", type=Path, required=True, help="folder to write the model into")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same model)")
    return parser


def _version() -> str:
    """The installed distribution's version (pyproject.toml), or 'unknown' in a bare source checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spar")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True)
    try:
        if args.command == "run":
            return _cmd_run(args, console)
        if args.command == "api":
            import uvicorn

            from services import logs
            from services.api.main import check_token
            from services.api.server import server_options
            from services.api.settings import Settings

            settings = Settings()
            check_token(settings)  # a missing or short SPAR_API_TOKEN: one line, before uvicorn
            logs.configure(None, json_stderr=True)
            logs.adopt("uvicorn")  # its start/stop lines as JSON; requests are logged by AccessLog
            uvicorn.run(
                "services.api:create_app",
                factory=True,
                host=args.host,
                port=args.port,
                log_config=None,
                access_log=False,
                **server_options(settings),  # header size bound and deadline (services/api/server.py)
            )
            return 0
        if args.command == "worker":
            from services import logs
            from shared.runtime.queue import redis_url
            from workers.worker import run_worker

            logs.worker_json()
            url = args.queue_url or redis_url()
            _quiet_libraries()
            run_worker(
                args.role,
                url,
                args.heartbeat_ttl,
                args.burst,
                args.name,
                log_setup=logs.worker_json,
            )
            return 0
        if args.command == "worker-probe":
            return _worker_probe(args)
        if args.command == "eval":
            from services.eval_cli import run_eval_command

            return run_eval_command(args, console)
        if args.command == "report":
            from services.report import write_report

            out = args.out or args.run_dirs[0] / f"report.{args.format}"
            console.print(f"report written to {write_report(args.run_dirs, out, args.format)}")
            if args.export_generations is not None:
                from services.export import export_runs

                files = export_runs(args.run_dirs, args.export_generations)
                console.print(f"{len(files)} files of generations written to {args.export_generations}")
            return 0
        if args.command == "status":
            from services.status_cli import status_command

            return status_command(args.run_dirs, args.json)
        if args.command in ("pack", "unpack"):
            return _cmd_pack(args, console)
        if args.command == "hub":
            return _cmd_hub_push(args, console)
        if args.command == "prompts":
            from services.prompts_cli import run_prompts_command

            return run_prompts_command(args, console)
        if args.models_command == "prepare":
            from workers.models.smollm2 import prepare_smollm2

            started = time.perf_counter()
            path = prepare_smollm2(args.out)
            console.print(f"SmolLM2-135M-Instruct ready in {path} ({time.perf_counter() - started:.0f} s)")
            return 0
        from workers.models.tiny import build_tiny_model

        path = build_tiny_model(args.out, seed=args.seed)
        console.print(f"tiny model ready in {path}")
        return 0
    except KeyboardInterrupt:  # before a run directory exists (spar run reports its own, with the path)
        console.print("[yellow]interrupted[/]")
        return 130
    except (SparError, FileNotFoundError) as exc:  # each message names what to change (shared/errors.py)
        print_error(console, str(exc))
        return exc.exit_code if isinstance(exc, SparError) else 2


def _cmd_pack(args: argparse.Namespace, console) -> int:
    """``spar pack`` / ``spar unpack`` (shared/runtime/packing.py): what was left out or will be rebuilt."""
    import shlex

    from rich.markup import escape

    from shared.runtime.packing import pack_run, unpack_run

    if args.command == "pack":
        out = args.out or Path(f"{args.run_dir.resolve().name}.tar.gz")
        archive, versions = pack_run(args.run_dir, out)
        saved = sum(v.bytes_left_out for v in versions) / 2**20
        console.print(
            f"packed {escape(str(args.run_dir))} into {escape(str(archive))} "
            f"({archive.stat().st_size / 2**20:.1f} MiB; {saved:.0f} MiB of weights left out)"
        )
        for v in versions:
            console.print(f"  {v.label}: rebuilt by iteration {v.iteration}'s {v.stage} after unpacking")
        return 0
    target, versions = unpack_run(args.archive, args.runs_dir)
    console.print(f"unpacked into {escape(str(target))}")
    for v in versions:
        console.print(
            f"  {v.label}: iteration {v.iteration}'s {v.stage} trains it again; published only if its "
            f"weights match (sha256 {v.weights_sha256[:16]}...)"
        )
    # one line, never folded: it is copied into a terminal
    console.print(f"continue with: spar run --resume {escape(shlex.quote(str(target)))}", soft_wrap=True)
    return 0


def _cmd_run(args: argparse.Namespace, console) -> int:
    from services.runs import ConfigError, create_run, load_config_file, open_run
    from shared.runtime.shards import load_config

    if (args.config is None) == (args.resume is None):
        raise ConfigError("give either a CONFIG file or --resume RUN_DIR (not both)")
    if args.resume is not None and args.overrides:
        raise ConfigError("--set changes a new run's config; a resumed run keeps the settings it has")
    if args.resume is not None and args.fork is not None:
        raise ConfigError("--fork makes a new run from CONFIG; it cannot be combined with --resume")
    if args.dry_run and (args.resume is not None or args.fork is not None):
        raise ConfigError(
            "--dry-run estimates a new run from CONFIG; it cannot be combined with --resume or --fork"
        )
    from services.preflight import check_hub, check_inputs
    from shared.runtime.data_inputs import check_inputs as check_data_inputs
    from shared.runtime.tracking import check_run_trackers

    if args.cache_dir is not None:  # before any built-in model is resolved
        os.environ["SPAR_CACHE_DIR"] = str(args.cache_dir.resolve())
    _library_log_levels(args.verbose)
    if args.resume is not None:
        paths = open_run(args.resume)
        check_run_trackers(load_config(paths))
        check_inputs(load_config(paths))  # a model folder moved away since: say so before loading
        check_data_inputs(paths)  # a data file edited since the run was created: before any work
        check_hub(load_config(paths))  # the hub token: in this shell too, before any work
    else:
        config = load_config_file(args.config, args.overrides)
        check_run_trackers(config)  # a tracker's missing package: before a run directory is made
        check_inputs(config)  # every path and model folder: before a run directory is made
        hub_line = check_hub(config)  # a hub push's token: now, not after the first training
        if args.dry_run:
            return _dry_run(config, console)
        source = open_run(args.fork) if args.fork is not None else None
        paths = create_run(config, args.runs_dir, args.run_id, source=str(args.config))
        if hub_line is not None:
            console.print(hub_line)
        if source is not None:
            from services.fork import fork_into
            from shared.runtime.artifacts import FORK_RECORD, read_json
            from workers.resolved import resolved_settings

            reused = fork_into(source, paths, resolved_settings)
            listed = ", ".join(f"{s}@{t}" for t, s in reused) or "nothing (no stage is shared)"
            console.print(f"forked from {source.run_id}: reusing {listed}")
            record = read_json(paths.root / FORK_RECORD)
            if record.get("stopped"):
                console.print(f"  not reused from {record['stopped']}")
            for taken in record.get("evaluations", []):
                keys = ", ".join(taken["kept"])
                console.print(f"  eval@{taken['iteration']} takes the source's scores of {keys}")
    from services.run_owner import claim_run

    claim = claim_run(paths)  # a second `spar run` of this run is refused while this one works
    try:
        return _execute_run(paths, args, console)
    finally:
        claim.release()


def _execute_run(paths, args: argparse.Namespace, console) -> int:
    """Run what is left of the run in ``paths`` in this process, with progress and the summary."""
    from services import logs
    from services.console import report_console
    from services.local import LocalExecutor
    from services.summary import iteration_summary, render
    from shared.runtime.shards import load_config

    _quiet_libraries()
    logs.configure(paths.events, json_stderr=args.log_json)
    console.print(f"run [bold]{paths.run_id}[/] in {paths.root}")

    from rich.markup import escape

    from services.progress import RunProgress, hub_push_warnings, zero_lr_warning
    from shared.stages import pipeline

    config = load_config(paths)
    order = pipeline(config.stages, config.iterations, with_init=config.init is not None)
    started = time.perf_counter()
    warnings: list[str] = []
    eta = _run_eta(paths, config)
    try:
        with RunProgress(console, order, config.iterations, disabled=args.no_progress, eta=eta) as progress:
            loads: list[float] = []

            def on_shard(iteration: int, stage: str, done: int, total: int) -> None:
                progress.on_shard(iteration, stage, done, total)
                if done == total:
                    found = [zero_lr_warning(paths.root, iteration, stage)]
                    found += hub_push_warnings(paths.root, iteration, stage)
                    for warning in filter(None, found):
                        warnings.append(warning)
                        console.print(f"[yellow]warning:[/] {escape(warning)}")

            executor = LocalExecutor.for_run(paths, progress=progress.on_batch, on_shard=on_shard)

            def on_load(role: str, path: str, seconds: float) -> None:
                loads.append(seconds)
                progress.on_loaded(role, path, seconds)

            executor.engines.on_load = on_load
            if hasattr(executor.engines, "on_loading"):
                executor.engines.on_loading = progress.on_loading
            executor.run()
    except KeyboardInterrupt:
        console.print(interrupted_message(paths.root))
        return 130
    out = report_console()
    for t in range(config.iterations):
        out.print(render(iteration_summary(paths, t)))
    total = time.perf_counter() - started
    out.print(time_breakdown(executor.stage_wall, loads, total))
    for warning in warnings:  # again below the tables, where a reader of the log looks last
        out.print(f"warning: {warning}")
    _record_rates(paths.root, executor.stage_wall)
    out.print(f"run {paths.run_id} done in {total:.1f} s; outputs in {paths.root}")
    return 0


def _run_eta(paths, config):
    """The run's ETA as the progress line asks for it: this run's recorded shards, and for stages it
    has not run yet the rates a dry run of these models left in the cache (read once)."""
    from services.estimate import load_rates
    from services.eta import run_eta
    from shared.runtime.settings import settings

    rates = load_rates(config, settings().cache_root)
    return lambda: run_eta(paths, config, rates)


def _cmd_hub_push(args: argparse.Namespace, console) -> int:
    """``spar hub push RUN_DIR``: exit 0 when every configured version is on the hub, 1 otherwise."""
    from rich.markup import escape

    from services import logs
    from services.preflight import check_hub
    from services.runs import ConfigError, open_run
    from shared.runtime.shards import load_config
    from workers.hub import push_run

    paths = open_run(args.run_dir)
    config = load_config(paths)
    if config.hub is None:
        raise ConfigError(f"{paths.root}: the run's config has no hub section, so there is nowhere to push")
    check_hub(config)
    logs.configure(paths.events)
    pushes = push_run(paths, config)
    for p in pushes:
        where = f"{p.repo_id}@{p.revision}"
        if p.status == "pushed":
            console.print(f"{p.role} {p.version}: pushed to {escape(where)} ({escape(p.commit_url or '')})")
        else:
            failed = f"[red]{p.role} {p.version}: push to {escape(where)} failed:[/]"
            console.print(f"{failed} {escape(p.error or '')}")
    if not pushes:
        console.print("no published version of the configured roles to push")
    return 1 if any(p.status == "failed" for p in pushes) else 0


def _record_rates(run_root: Path, stage_wall: dict[tuple[int, str], float]) -> None:
    """Keep this run's per-prompt costs for the next ``--dry-run`` of these models (best effort:
    a read-only cache must not fail a finished run)."""
    from services.estimate import record_run
    from shared.runtime.settings import settings

    try:
        record_run(run_root, stage_wall, settings().cache_root)
    except (OSError, ValueError) as exc:
        import logging

        logging.getLogger("spar.cli").warning(
            "rates not recorded", extra={"event": "estimate.record_failed", "error": str(exc)[:200]}
        )


def _dry_run(config, console) -> int:
    """Everything ``spar run`` would check, the resolved config, and the estimated cost per stage.

    Writes no run: built-in models are prepared into the cache and the engines loaded once to
    time them (``services/estimate.py``), which is what makes the estimate this machine's.
    """
    import json

    from services.estimate import (
        calibrate,
        estimate,
        llm_judged_share,
        load_record,
        render,
        save_calibration,
    )
    from services.preflight import check_hub, check_inputs
    from services.runs import read_prompts
    from shared.runtime.settings import settings

    _quiet_libraries()
    resolved = check_inputs(config)
    hub_line = check_hub(config)
    # plain prints: the config and the table are for reading and for scripts, never folded by rich
    print("resolved config:")
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    for item in resolved:
        state = "" if item.note == "built-in" else " (exists)"
        print(f"  {item.field}: {item.value} -> {item.resolved}{state}")
    prompts = read_prompts(config)
    rates = load_record(config, settings().cache_root)
    if rates is None:
        console.print("calibrating: loading each engine and timing a few short generations ...")
        rates = calibrate(config, [p.prompt for p in prompts[:16]])
        save_calibration(config, settings().cache_root, rates)  # the run's ETA falls back on it
    if hub_line is not None:
        print(hub_line)
    print(f"{len(prompts)} prompts, {config.iterations} iteration(s)")
    share = llm_judged_share(config, [p.metadata for p in prompts])
    print(render(estimate(config, len(prompts), rates, share), rates))
    print("dry run: nothing was written under the runs folder")
    return 0


def interrupted_message(run_dir: Path) -> str:
    """What Ctrl-C prints: the command that continues this very run, ready to paste."""
    import shlex

    from rich.markup import escape

    return (
        "[yellow]interrupted[/]: finished shards are kept; continue with "
        f"`spar run --resume {escape(shlex.quote(str(run_dir)))}`"
    )


def time_breakdown(stage_wall: dict[tuple[int, str], float], loads: list[float], total: float) -> str:
    """Where this invocation's wall time went: per stage (summed over iterations), engine loads
    (inside those stages), and the rest (start-up, summaries). Stages a resume skipped cost ~0."""
    per_stage: dict[str, float] = {}
    for (_, stage), seconds in stage_wall.items():
        per_stage[stage] = per_stage.get(stage, 0.0) + seconds
    parts = [f"{stage} {seconds:.1f} s" for stage, seconds in per_stage.items() if seconds >= 0.05]
    other = max(total - sum(per_stage.values()), 0.0)
    return (
        f"where the time went ({total:.1f} s): "
        + ", ".join(parts)
        + f"; of which engine loads {sum(loads):.1f} s "
        f"({len(loads)}); outside stages {other:.1f} s"
    )


def _worker_probe(args: argparse.Namespace) -> int:
    """Liveness of this host's worker, judged by its heartbeat hash in Redis.

    When Redis itself is unreachable the probe passes: the worker is then waiting to reconnect
    (``worker.reconnect``), and restarting it would only reload its model without reaching Redis.
    """
    import socket

    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from shared.runtime.queue import redis_url, worker_key

    redis = Redis.from_url(args.queue_url or redis_url(), socket_timeout=5, socket_connect_timeout=5)
    host = socket.gethostname()
    try:
        for key in redis.scan_iter(match=worker_key("*")):
            fields = {k.decode(): v.decode() for k, v in redis.hgetall(key).items()}
            if fields.get("host") == host and fields.get("role") == args.role:
                return 0
    except (RedisConnectionError, RedisTimeoutError) as exc:
        print(
            f"redis unreachable ({exc}): the worker is reconnecting; not failing it for that", file=sys.stderr
        )
        return 0
    print(f"no live {args.role} worker on {host}", file=sys.stderr)
    return 1


def _library_log_levels(verbose: bool) -> None:
    """vLLM and DeepSpeed print INFO lines (and DeepSpeed a "Setting accelerator to CPU" warning at
    import) that bury spar's own; they go to WARNING unless ``--verbose``. Set in the environment
    before either library is imported, so engine processes started later inherit it too."""
    if verbose:
        os.environ["VLLM_LOGGING_LEVEL"] = "INFO"
        os.environ["SPAR_ENGINE_LOG_LEVEL"] = "INFO"
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():  # what DeepSpeed would conclude anyway, minus its warning
            os.environ["DS_ACCELERATOR"] = "cpu"


def _quiet_libraries() -> None:
    """Library progress bars and advisories would tear through our own bars; the events log has it all."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()


if __name__ == "__main__":
    sys.exit(main())
