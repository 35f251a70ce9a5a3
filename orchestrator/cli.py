"""The ``dmcondense`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator import driver
from orchestrator.config import ConfigError, apply_overrides, differing_keys, from_dict, identity, load_config

console = Console(soft_wrap=True)  # long paths and errors stay on one line

EXIT_OK, EXIT_FAILED_SHARDS, EXIT_USAGE, EXIT_FAILED_EVALUATION = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark parses its own options
        from workers.bench import main as bench_main

        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, driver.RunError, FileNotFoundError, ValueError) as exc:
        if os.environ.get("DMCONDENSE_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmcondense", description="Dataset condensation with Distribution Matching on Ray")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="plan, condense, evaluate and report")
    run.add_argument("config", help="YAML config (see configs/)")
    _add_set(run)
    run.add_argument("--out", help="run directory: a local path or s3:// gs:// URI (default: the config's output)")
    _add_address(run)
    run.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    run.set_defaults(func=cmd_run)

    res = sub.add_parser("resume", help="finish an interrupted or failed run")
    res.add_argument("run")
    res.add_argument("--config", help="refuse to resume unless the run used this config")
    _add_set(res, "overrides; only output/resources/evaluate keys may differ from the run's config")
    _add_address(res)
    res.set_defaults(func=cmd_resume)

    st = sub.add_parser("status", help="one row per shard, from the run directory alone")
    st.add_argument("run")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    ev = sub.add_parser("evaluate", help="(re)run the evaluation stage of a committed run")
    ev.add_argument("run")
    ev.add_argument("--snapshots", action="store_true",
                    help="score only the kept checkpoints (condense.keep_checkpoints) as dm@<iteration>, "
                         "keeping the other results: an iteration sweep from one run")
    _add_set(ev, "evaluate.* overrides")
    _add_address(ev)
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="export the synthetic set")
    ex.add_argument("run")
    ex.add_argument("--format", required=True, choices=["pt", "npz", "png"])
    ex.add_argument("--to", required=True, help="output file (pt, npz) or folder (png)")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("prepare", help="prepare a dataset as per-class Parquet, in parallel")
    pr.add_argument("source", help="digits, mnist, fashion_mnist, svhn, cifar10, cifar100, tinyimagenet, imagenet, imagefolder, imagenet64")
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


def _add_set(p: argparse.ArgumentParser, help_text: str = "override a config key, value read as YAML") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")


# ------------------------------------------------------------------ commands
def cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"output={args.out}"] if args.out else [])
    cfg = load_config(args.config, overrides)
    record, _ = driver.prepare_run(cfg, cfg.output)
    if args.dry_run:
        driver.describe_plan(record, console)
        console.print("dry run: nothing was written and no task started")
        return EXIT_OK
    driver.write_run(cfg.output, record)
    return _execute(cfg.output, record, args.address)


def cmd_resume(args: argparse.Namespace) -> int:
    record = driver.load_run(args.run)
    stored = record["config"]
    if args.config:
        asked = load_config(args.config, args.overrides).model_dump(mode="json")
        keys = differing_keys(identity(stored), identity(asked))
        if keys:
            raise driver.RunError(
                f"refusing to resume {args.run}: it was run with another configuration "
                f"(differing keys: {', '.join(keys)}); start a new run with --out instead"
            )
    cfg = from_dict(apply_overrides(stored, args.overrides + [f"output={args.run}"]))
    keys = differing_keys(identity(stored), identity(cfg))
    if keys:
        raise driver.RunError(f"refusing to resume {args.run} with changed keys {', '.join(keys)}: "
                              "they change the synthetic images; start a new run with --out instead")
    record["config"] = cfg.model_dump(mode="json")
    driver.write_run(args.run, record)
    return _execute(args.run, record, args.address)


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator import shards
    from orchestrator.eval_scores import evaluation_state

    record = driver.load_run(args.run)
    rows = []
    for spec in driver.plan_of(record):
        st = shards.verify(args.run, spec)
        rows.append({"shard": spec.name, "state": st.state, "classes": list(spec.class_ids), "detail": st.detail,
                     "rows": (st.manifest or {}).get("rows"), "wall_time_s": (st.manifest or {}).get("wall_time_s")})
    evaluation = evaluation_state(args.run)
    if args.json:
        print(json.dumps({"run": args.run, "config_hash": record["config_hash"], "shards": rows,
                          "evaluation": evaluation}, indent=2))
    else:
        table = Table(title=f"{args.run}")
        for col in ("shard", "state", "classes", "rows", "detail"):
            table.add_column(col)
        for r in rows:
            classes = r["classes"]
            span = f"{classes[0]}..{classes[-1]}" if len(classes) > 2 else ",".join(map(str, classes))
            table.add_row(r["shard"], r["state"], span, str(r["rows"] or ""), r["detail"])
        console.print(table)
        counts = {s: sum(r["state"] == s for r in rows) for s in ("committed", "in_progress", "failed", "corrupt", "pending")}
        console.print(", ".join(f"{v} {k}" for k, v in counts.items() if v))
        more = (f"; `dmcondense evaluate {args.run}` with the same evaluate.* settings finishes it"
                if evaluation["state"] == "unfinished" else "")
        console.print(f"evaluation: {evaluation['state']}, {evaluation['networks_scored']} networks scored{more}",
                      highlight=False)
    return EXIT_OK if all(r["state"] == "committed" for r in rows) else EXIT_FAILED_SHARDS


def cmd_evaluate(args: argparse.Namespace) -> int:
    record = driver.load_run(args.run)
    bad = [o for o in args.overrides if not o.startswith("evaluate.")]
    if bad:
        raise ConfigError(f"evaluate takes only evaluate.* overrides, got {bad}")
    cfg = from_dict(apply_overrides(record["config"], args.overrides))
    record["config"] = cfg.model_dump(mode="json")
    methods = None
    if args.snapshots:
        from orchestrator.evaluation import snapshot_methods

        methods = snapshot_methods(args.run, record["plan"]["shards"])
        if not methods:
            raise ConfigError(f"{args.run} kept no checkpoints of every shard; run with "
                              "--set condense.keep_checkpoints=true to keep them")
    return _execute(args.run, record, args.address, condense=False, methods=methods)


def cmd_export(args: argparse.Namespace) -> int:
    from orchestrator.export import export_run

    record = driver.load_run(args.run)
    console.print(f"wrote {export_run(args.run, record, args.format, args.to)}")
    return EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    from orchestrator.prepare import prepare_command

    return prepare_command(
        source=args.source, root=args.root, out=args.out, resolution=args.resolution, strict=args.strict,
        address=args.address, download=args.download, classes_per_task=args.classes_per_task,
    )


# --------------------------------------------------------------- execution
def _execute(run: str, record: dict[str, Any], address: str | None, condense: bool = True,
             methods: list[str] | None = None) -> int:
    from orchestrator.eval_pool import EvaluationError
    from orchestrator.evaluation import evaluate_run
    from orchestrator.local_ray import ray_session
    from orchestrator.report import results_table, write_report

    cfg = from_dict(record["config"])
    with ray_session(address) as where:
        console.print(f"{cfg.name}: running on {where}; run directory {run}")
        if condense:
            outcome = driver.condense_all(run, record, console)
            if outcome.failed:
                for sid, err in sorted(outcome.failed.items()):
                    console.print(f"[red]shard-{sid:05d} failed:[/] {err}", highlight=False)
                console.print(f"{len(outcome.failed)} shards failed; the others are committed. "
                              f"Finish with: dmcondense resume {run}")
                return EXIT_FAILED_SHARDS
        try:
            rows = evaluate_run(run, cfg, record["plan"]["shards"], console, methods)
        except EvaluationError as exc:
            console.print(f"[red]evaluation failed:[/] {exc}", highlight=False)
            again = f"dmcondense resume {run}" if condense else "the same dmcondense evaluate command"
            console.print(f"The networks scored so far are kept: {again} trains only the others.", highlight=False)
            return EXIT_FAILED_EVALUATION
    write_report(run, record, rows)
    _print_results(results_table(rows, record["dataset"]["name"], cfg.condense.ipc))
    console.print(f"report: {run}/report.md (grid.png, loss.png)")
    return EXIT_OK


def _print_results(table_rows: list[dict[str, Any]]) -> None:
    if not table_rows:
        return
    table = Table(title="test accuracy (%)")
    for col in ("method", "model", "networks", "mean ± std", "paper"):
        table.add_column(col)
    for r in table_rows:
        paper = f"{r['paper']:.1f}" if r["paper"] is not None else "-"
        table.add_row(r["method"], r["model"], str(r["n"]), f"{r['mean']:.2f} ± {r['std']:.2f}", paper)
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
