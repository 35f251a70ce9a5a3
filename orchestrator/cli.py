"""The ``dmcondense`` command line: parses, calls the pipeline, prints; owns the exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator import commands, pipeline
from orchestrator.run_opening import opened, pool_dir
from orchestrator.artifacts.continual_results import curve_table
from orchestrator.artifacts.pool_networks import accuracy_bins
from orchestrator.artifacts.scores import read_results
from orchestrator.artifacts.shards import SNAPSHOT_PREFIX, snapshot_iterations
from orchestrator.commits import CorruptFile
from orchestrator.config import ConfigError, RunConfig, load_config
from orchestrator.export import FORMATS as EXPORT_FORMATS
from orchestrator.export import export_run
from orchestrator.driver_session import driver_session
from orchestrator.report import FAIR_HEADS, TableRow, has_fair_scores, pictures, report
from orchestrator.errors import RunError
from orchestrator.run_dir import RunDir
from orchestrator.run_status import run_status
from orchestrator.stage_runner import StageFailed
from orchestrator.stages.continual import check_continual
from orchestrator.stages.pool import make_pool
from orchestrator.stages.prepare import prepare
from orchestrator.stopping import Interrupted, handled, program, stopped_before_work
from orchestrator.storage import StorageError
from workers.data import DatasetError

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)  # logs: lines and tables unwrapped

# The exit codes (README, "Commands"); 130 and 143: stopped by SIGINT or SIGTERM (128 + the signal).
EXIT_OK, EXIT_FAILED_UNITS, EXIT_USAGE, EXIT_FAILED_EVALUATION, EXIT_STORAGE = 0, 1, 2, 3, 4


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = None
    with handled() as stop:  # orchestrator.stopping: from here (or from the program's start) to the end
        try:
            if argv[:1] == ["bench"]:  # the benchmark parses its own options
                from benchmarks.dm_loop import main as bench_main

                return bench_main(argv[1:])
            args = _parser().parse_args(argv)
            args.command_line = commands.shown_command_line(argv)  # named in the lease this command holds
            try:
                return int(args.func(args))
            except (ConfigError, RunError, DatasetError, FileNotFoundError, ValueError, CorruptFile) as exc:
                return _error(exc, EXIT_USAGE)
            except StorageError as exc:
                return _error(exc, EXIT_STORAGE)
        except BaseException as exc:  # a signal outside a driver session's work (_drive reports those inside)
            interrupted = stop.interrupted(exc)
            if interrupted is None:
                raise
            console.print(_stopped_early(interrupted, argv, args), highlight=False)
            return interrupted.exit_code


def _stopped_early(exc: Interrupted, argv: list[str], args: argparse.Namespace | None) -> str:
    """The line of a command stopped outside a driver session's work: one that has a session
    (``--address``) does its work only there; the others (status, export, bench) may be half-way."""
    again = commands.shown_command_line(argv)
    if argv[:1] != ["bench"] and (args is None or hasattr(args, "address")):
        return stopped_before_work(exc, again)
    return f"stopped by {exc.name} before it finished; run again with: {again}"


def _error(exc: BaseException, code: int) -> int:
    """One line (the traceback with DMCONDENSE_DEBUG=1) and the documented exit code."""
    if os.environ.get("DMCONDENSE_DEBUG"):
        raise exc
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    return code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmcondense", description="Dataset condensation with Distribution Matching on Ray")
    sub = p.add_subparsers(dest="command", required=True)

    run = _add_job(sub, "run", "plan, condense, select baselines, evaluate and report", "YAML config (see configs/)",
                   "run directory: a local path or s3:// gs:// URI (default: the config's output)")
    run.add_argument("--dry-run", action="store_true", help="check the config against the dataset, print the plan, stop")
    _add_make_pool(run)
    run.set_defaults(func=cmd_run)

    res = sub.add_parser("resume", help="finish an interrupted or failed run: compute only what is missing")
    res.add_argument("run")
    res.add_argument("--config", help="refuse to resume unless the run used this config")
    res.add_argument("--recompute-changed", action="store_true",
                     help="condense again the shards of the classes whose images changed since they were planned "
                          "(the dataset's mean and std stay as recorded); every set is scored again")
    _add_set(res, "overrides; only keys that do not change the images (resources, evaluate, output)")
    _add_address(res, writes=True)
    _add_make_pool(res)
    res.set_defaults(func=cmd_resume)

    st = sub.add_parser("status", help="every shard, the baselines and the evaluation, from the run directory alone")
    st.add_argument("run")
    st.add_argument("--json", action="store_true")
    st.add_argument("--verify", action="store_true", help="hash every committed file against its manifest (reads "
                    "every byte) instead of checking its length")
    st.set_defaults(func=cmd_status)

    ev = sub.add_parser("evaluate", help="select the baselines asked for and score what is not scored yet")
    ev.add_argument("run")
    ev.add_argument("--snapshots", action="store_true",
                    help="score the kept checkpoints (condense.keep_checkpoints) as dm@<iteration>: an iteration "
                         "sweep from one run")
    _add_set(ev, "evaluate.* (and resources.*) overrides, kept in the run's record")
    _add_address(ev, writes=True)
    _add_make_pool(ev)
    ev.set_defaults(func=cmd_evaluate)

    po = _add_job(sub, "pool", "train a pool of networks on the real training set (condense.networks: pool, the "
                  "forgetting baseline)", "a YAML config, or a run directory (its own config)",
                  "where pools live (pool.uri; default: the run directory's pool/)")
    po.set_defaults(func=cmd_pool)

    co = _add_job(sub, "continual", "class-incremental learning on one growing run (continual: section)",
                  "YAML config (see configs/*-continual-*.yaml)", "run directory (default: the config's output)")
    co.set_defaults(func=cmd_continual)

    na = sub.add_parser("nas", help="rank architectures on the run's synthetic set as a NAS proxy (nas: section)")
    na.add_argument("run")
    _add_set(na, "nas.* (and resources.*, evaluate.*) overrides")
    _add_address(na, writes=True)
    na.set_defaults(func=cmd_nas)

    rp = sub.add_parser("report", help="write the report again from what the run directory holds")
    rp.add_argument("run")
    rp.set_defaults(func=cmd_report)

    ex = sub.add_parser("export", help="export the synthetic set")
    ex.add_argument("run")
    ex.add_argument("--format", required=True, choices=list(EXPORT_FORMATS),
                    help="pt: the official DM code's layout; npz; png or imagefolder: torchvision's ImageFolder; "
                         "hf: a Hugging Face datasets folder with its card (pip install 'dmcondense[hf]')")
    ex.add_argument("--to", required=True, help="the path written, exactly: a file (pt, npz) or a folder (png, "
                                                "imagefolder, hf); missing folders above it are created")
    ex.add_argument("--force", action="store_true",
                    help="replace an existing file, or a folder that holds only an earlier export")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("prepare", help="prepare a dataset as per-class Parquet, in parallel")
    pr.add_argument("source", help="digits, mnist, fashion_mnist, svhn, cifar10, cifar100, tinyimagenet, imagenet, "
                                   "imagefolder, imagenet64")
    pr.add_argument("--root", help="where the source files are")
    pr.add_argument("--out", required=True, help="prepared dataset URI")
    pr.add_argument("--resolution", type=int)
    pr.add_argument("--strict", action="store_true", help="fail on a corrupt image instead of skipping it")
    pr.add_argument("--download", action="store_true", help="let torchvision download the source")
    pr.add_argument("--classes-per-task", type=int, default=None)
    _add_address(pr)
    pr.set_defaults(func=cmd_prepare)

    sub.add_parser("bench", help="time the DM loop against the per-class reference (dmcondense bench --help)")
    return p


def _add_job(sub: Any, name: str, help_text: str, source_help: str, out_help: str) -> argparse.ArgumentParser:
    """A command that reads a config (its first argument), takes --set overrides and writes under --out."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("source", help=source_help)
    _add_set(p)
    p.add_argument("--out", help=out_help)
    _add_address(p, writes=True)
    return p


def _job_sets(args: argparse.Namespace, out_key: str = "output") -> list[str]:
    """A job's --set overrides, with --out as the key it stands for."""
    return list(args.overrides) + ([f"{out_key}={args.out}"] if args.out else [])


def _add_set(p: argparse.ArgumentParser, help_text: str = "override a config key, value read as YAML") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def _add_make_pool(p: argparse.ArgumentParser) -> None:
    p.add_argument("--make-pool", action="store_true",
                   help="train the pool the run needs first, when it lacks one (a shard never trains one)")


def _add_address(p: argparse.ArgumentParser, writes: bool = False) -> None:
    p.add_argument("--address", help="the Ray cluster's GCS address, HOST:PORT of its head (default: RAY_ADDRESS, "
                                     "else a local Ray on 127.0.0.1)")
    if writes:
        p.add_argument("--wait", action="store_true",
                       help="when another driver holds the directory's lease, wait for it instead of stopping")


# ------------------------------------------------------------------ commands
def cmd_run(args: argparse.Namespace) -> int:
    sets = _job_sets(args)
    cfg = load_config(args.source, sets)
    if args.dry_run:
        return _dry_run(cfg, commands.pool(args.source, sets), args.make_pool)
    run = pipeline.new_run(cfg, pool_hint=commands.pool(args.source, sets), make_pool=args.make_pool)
    return _run_stages(args, run, commands.resume(run.uri), make_pool=args.make_pool)


def _dry_run(cfg: RunConfig, pool_hint: str, make_pool: bool) -> int:
    """The checks and the plan, with nothing written and nothing fetched."""
    try:
        run = pipeline.new_run(cfg, pool_hint=pool_hint, make_pool=make_pool, download=False)
    except DatasetError as exc:
        if not cfg.dataset.download:
            raise
        console.print(f"dry run: {exc.args[0].split(';')[0]}; the run fetches it first (dataset.download: true), "
                      "then checks the config against it; nothing was written", highlight=False)
        return EXIT_OK
    pipeline.describe_plan(run, console)
    console.print("dry run: nothing was written and no task started")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    run = pipeline.reopened_run(args.run, args.overrides, args.config, make_pool=args.make_pool,
                                recompute_changed=args.recompute_changed, kind="run")
    return _run_stages(args, run, commands.resume(run.uri), make_pool=args.make_pool)


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = pipeline.reopened_run(args.run, args.overrides, make_pool=args.make_pool, kind="run")
    methods = None
    if args.snapshots:
        methods = [f"{SNAPSHOT_PREFIX}{it}" for it in snapshot_iterations(run)]
        if not methods:
            raise ConfigError(f"{args.run} kept no checkpoints of every shard; a run keeps them with "
                              "--set condense.keep_checkpoints=true")
    again = commands.evaluate(run.uri, args.overrides) + (" --snapshots" if args.snapshots else "")
    return _run_stages(args, run, again, condensing=False, methods=methods, make_pool=args.make_pool)


def cmd_pool(args: argparse.Namespace) -> int:
    sets = _job_sets(args, out_key="pool.uri")
    if RunDir.exists(args.source):
        run = pipeline.reopened_run(args.source, sets, make_pool=True)
        cfg, info = run.config, run.dataset
    else:
        cfg = load_config(args.source, sets)
        info = pipeline.dataset_info(cfg)
    pool = pool_dir(cfg, info)

    def work(where: str) -> int:
        console.print(f"pool: running on {where}; pool {pool.uri}", highlight=False)
        make_pool(pool, cfg, console)
        bins = ", ".join(f"{lo}-{lo + 10}%: {n}" for lo, n in sorted(accuracy_bins(pool).items()))
        console.print(f"pool {pool.record.key}: {pool.networks} networks of {pool.record.settings.model}; states by "
                      f"validation accuracy: {bins}; histogram {pool.histogram()}", highlight=False)
        return EXIT_OK

    return _drive(args, commands.pool(args.source, sets), work, writes=[pool.uri])


def cmd_continual(args: argparse.Namespace) -> int:
    # without --out, a continual run gets a directory of its own beside the config's plain run
    sets = _job_sets(args) if args.out else [*args.overrides,
                                             f"output={load_config(args.source, args.overrides).output}-continual"]
    cfg = load_config(args.source, sets)
    info = pipeline.dataset_info(cfg)
    check_continual(cfg, info)
    if "herding" in cfg.continual.methods and cfg.evaluate.coreset_feature_epochs == 0:
        console.print("continual: herding selects in a random network's features (evaluate.coreset_feature_epochs "
                      "is 0); the paper's herding trains them on each step's new classes: --set "
                      "evaluate.coreset_feature_epochs=20", highlight=False)

    def work(where: str) -> int:
        console.print(f"{cfg.name}: running on {where}; run directory {cfg.output}", highlight=False)
        header, rows = curve_table(pipeline.run_continual(cfg, info, console))
        table = Table(title="test accuracy on the classes seen (%), mean over networks")
        for name in header:
            table.add_column(name)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        console.print(f"results: {cfg.output}/continual/report.md (results.parquet, accuracy.png)", highlight=False)
        return EXIT_OK

    return _drive(args, commands.job("continual", args.source, sets), work, writes=[cfg.output])


def cmd_nas(args: argparse.Namespace) -> int:
    run = pipeline.reopened_run(args.run, args.overrides)
    pipeline.check_nas(run)

    def work(where: str) -> int:
        run.save()
        console.print(f"nas: running on {where}; run directory {run.uri}", highlight=False)
        scores, qualities = pipeline.run_nas(run, console)
        table = Table(title=f"NAS over {len({s.architecture for s in scores})} architectures: proxy quality")
        for col in ("proxy", "Spearman, top", "Spearman, all", "selects", "its whole-set accuracy (%)", "training s"):
            table.add_column(col)
        for q in qualities:
            table.add_row(q.proxy, f"{q.spearman_top:.2f}", f"{q.spearman_all:.2f}", q.selected,
                          f"{100 * q.selected_whole_accuracy:.2f}", f"{q.train_seconds:.0f}")
        console.print(table)
        console.print(f"results: {run.path('nas', 'results.parquet')} (proxy-vs-whole.png)", highlight=False)
        return EXIT_OK

    return _drive(args, commands.nas(run.uri, args.overrides), work, writes=[run.uri])


def cmd_report(args: argparse.Namespace) -> int:
    run = opened(args.run)
    _print_results(report(run, read_results(run)), run)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    status = run_status(opened(args.run), verify=args.verify)
    if args.json:
        print(json.dumps(asdict(status), indent=2))
        return status.exit_code
    table = Table(title=args.run)
    for col in ("shard", "state", "classes", "rows", "detail"):
        table.add_column(col)
    for r in status.shards:
        span = f"{r.classes[0]}..{r.classes[-1]}" if len(r.classes) > 2 else ",".join(map(str, r.classes))
        table.add_row(r.shard, r.state, span, str(r.rows or ""), r.detail)
    console.print(table)
    console.print(status.shard_summary(), highlight=False)
    for method, count in status.baselines.items():
        console.print(f"baseline {method}: {count} of {len(status.shards)} shards selected", highlight=False)
    if status.pool is not None:
        p = status.pool
        console.print(f"pool: {p.committed} of {p.networks} networks committed, {p.states} states, at {p.uri}",
                      highlight=False)
    ev = status.evaluation
    more = f"; `{commands.evaluate(args.run)}` trains the others" if ev.state == "unfinished" else ""
    console.print(f"evaluation: {ev.state}, {ev.scored} of {ev.planned} networks scored{more}", highlight=False)
    return status.exit_code


def cmd_export(args: argparse.Namespace) -> int:
    console.print(f"wrote {export_run(opened(args.run), args.format, args.to, force=args.force)}")
    return EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    again = commands.prepare(args.source, args.root, args.out)  # the plan in OUT keeps the other options

    def work(where: str) -> int:
        meta = prepare(args.source, args.root, args.out, console=err, resolution=args.resolution, strict=args.strict,
                       classes_per_task=args.classes_per_task, download=args.download)
        err.print(f"prepared {meta['source']}: {len(meta['classes'])} classes, {sum(meta['train_counts']):,} train "
                  f"and {sum(meta['test_counts']):,} test images at {meta['resolution']}x{meta['resolution']} in "
                  f"{args.out}")
        return EXIT_OK

    return _drive(args, again, work, writes=[], out=err)


# ------------------------------------------------------------------ execution
def _run_stages(args: argparse.Namespace, run: RunDir, again: str, condensing: bool = True,
                methods: list[str] | None = None, make_pool: bool = False) -> int:
    pool = run.resolved.pool if make_pool else None

    def work(where: str) -> int:
        console.print(f"{run.config.name}: running on {where}; run directory {run.uri}", highlight=False)
        ready = pipeline.started(run, console, make_pool=make_pool)
        _print_results(pipeline.run_stages(ready, console, condensing=condensing, methods=methods), run)
        return EXIT_OK

    return _drive(args, again, work, writes=[run.uri, *([pool.uri] if pool else [])],
                  done=lambda: f"shards: {run_status(run).shard_summary()}")


def _drive(args: argparse.Namespace, again: str, work: Callable[[str], int], *, writes: list[str],
           done: Callable[[], str] | None = None, out: Console = console) -> int:
    """``work(where)`` in a driver session (orchestrator.driver_session) over the directories it
    ``writes``. Failed units: their errors, the command that finishes (``again``), exit 1 (3 for
    evaluation or NAS jobs). SIGINT/SIGTERM: one line of what is done and ``again``, exit 128 + signal."""
    started = False
    try:
        with driver_session(args.address, writes, command=args.command_line, wait=getattr(args, "wait", False),
                            notify=lambda message: out.print(message, highlight=False)) as where:
            started = True
            return work(where)
    except StageFailed as exc:  # each failed unit had its line as it failed
        out.print(f"[red]{exc.summary}[/]", highlight=False)
        out.print(f"Finish with: {again}", highlight=False)
        return EXIT_FAILED_EVALUATION if exc.stage in ("evaluate", "nas") else EXIT_FAILED_UNITS
    except Interrupted as exc:
        if not started:  # the address check, a lease's --wait, Ray's start
            out.print(stopped_before_work(exc, args.command_line), highlight=False)
        else:
            progress = f" {done()};" if done else ""
            out.print(f"stopped by {exc.name}: the work in flight was cancelled and everything committed is kept;"
                      f"{progress} finish with: {again}", highlight=False)
        return exc.exit_code


def _print_results(rows: list[TableRow], run: RunDir) -> None:
    if rows:
        fair = has_fair_scores(rows)
        table = Table(title="test accuracy (%)" + (", and DD-Ranking's fair scores (report.md says how)" if fair else ""))
        for col in ("method", "model", "networks", "mean ± std", "paper", *(FAIR_HEADS if fair else ())):
            table.add_column(col)
        for r in rows:
            paper = f"{r.paper:.1f}" if r.paper is not None else "-"
            table.add_row(r.label, r.model, str(r.n), f"{r.mean:.2f} ± {r.std:.2f}", paper, *(r.fair if fair else ()))
        console.print(table)
    console.print(f"report: {run.path('report.md')} ({pictures(run)})", highlight=False)


if __name__ == "__main__":  # signals handled from here on; `python -m orchestrator` from the first instant
    sys.exit(program(lambda stop: main()))
