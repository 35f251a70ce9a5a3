"""The continual stage: class-incremental learning on one growing run (paper 3.5, GDumb + DM).

The classes are split into steps by a seeded permutation. Each step grows the run's plan by
its new classes (new shards with new ids: the shards of earlier steps keep their ids, seeds
and bytes), condenses them and selects their baselines, then trains networks from scratch on
the memory of every class seen so far and scores them on those classes' test images. Every
stage computes only what is missing: a stopped continual run resumes where it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from rich.console import Console

from orchestrator import storage
from orchestrator.config import RunConfig, apply_overrides, from_dict
from orchestrator.figures import plt, png
from orchestrator.pipeline import new_run
from orchestrator.plan import PlanError, check_config_against_dataset, planned_classes
from orchestrator.run_dir import RunDir, RunError
from orchestrator.run_record import RunRecord
from orchestrator.stages.baselines import baselines
from orchestrator.stages.condense import condense
from orchestrator.stages.eval_scores import summarize
from orchestrator.stages.evaluate import evaluate
from workers.data.types import DatasetInfo
from workers.seeding import derive_seed


@dataclass(frozen=True)
class StepScore:
    step: int
    classes_seen: int
    method: str
    model: str
    seed: int
    accuracy: float  # on the test images of the classes seen


def class_steps(classes: list[int], steps: int, seed: int) -> list[list[int]]:
    """The classes in ``steps`` groups of (nearly) equal size, by a seeded permutation."""
    if steps > len(classes):
        raise RunError(f"continual.steps={steps} but there are only {len(classes)} classes to spread over them; "
                       f"set continual.steps to at most {len(classes)}")
    order = np.random.default_rng(derive_seed(seed, "continual")).permutation(classes)
    return [sorted(int(c) for c in part) for part in np.array_split(order, steps)]


def check_continual(cfg: RunConfig, info: DatasetInfo) -> list[list[int]]:
    """Before any task starts: the steps, and every class able to fill its memory."""
    classes = planned_classes(cfg, info)
    try:
        check_config_against_dataset(cfg, info, classes)
    except PlanError as exc:
        raise RunError(f"{exc} (the memory of each class)") from None
    return class_steps(classes, cfg.continual.steps, cfg.continual.seed)


def continual(cfg: RunConfig, info: DatasetInfo, console: Console) -> list[StepScore]:
    """Run every step, each computing only what the run directory lacks; returns every network's
    score, step by step (also in RUN/continual/results.parquet, with the curves' picture)."""
    steps, methods = check_continual(cfg, info), cfg.continual.methods
    coresets = [m for m in methods if m != "dm"]
    scores: list[StepScore] = []
    seen: list[int] = []
    for number, new in enumerate(steps, start=1):
        seen = sorted(seen + new)
        run = _step_run(from_dict(apply_overrides(cfg.model_dump(mode="json"),
                                                  [f"plan.classes={seen}", f"evaluate.baselines={coresets}"])), info)
        console.print(f"continual: step {number} of {len(steps)}, {len(seen)} classes seen ({len(new)} new)",
                      highlight=False)
        if "dm" in methods:
            condense(run, console)
        if coresets:
            baselines(run, coresets, console)
        scores += [StepScore(number, len(seen), s.method, s.model, s.seed, s.accuracy)
                   for s in evaluate(run, console, list(methods), test_classes=seen)]
    write_results(run, scores)
    return scores


def _step_run(cfg: RunConfig, info: DatasetInfo) -> RunDir:
    """The run as a step sees it: grown by the step's classes (and saved), or, for a step a
    stopped continual run had already reached, a view of the shards of the classes seen then."""
    seen = set(cfg.plan.classes or ())
    if RunDir.exists(cfg.output):
        current = RunDir.load(cfg.output)
        if seen <= set(current.record.classes):
            shards = [spec for spec in current.shards if set(spec.class_ids) <= seen]
            return RunDir(cfg.output, RunRecord.build(cfg, shards, info))
    run = new_run(cfg, info=info)
    run.save()
    return run


@dataclass(frozen=True)
class CurvePoint:
    method: str
    step: int
    classes_seen: int
    mean: float  # percent, over the networks of the first model trained
    std: float


def curves(scores: list[StepScore]) -> list[CurvePoint]:
    """mean +- std per method and step, methods in the order they first appear."""
    points = []
    for method in dict.fromkeys(s.method for s in scores):
        for step in sorted({s.step for s in scores}):
            mine = [s for s in scores if s.method == method and s.step == step]
            summary, *_ = summarize(mine)  # the first model's, where several were trained
            points.append(CurvePoint(method, step, mine[0].classes_seen, summary.mean, summary.std))
    return points


def curve_table(scores: list[StepScore]) -> tuple[list[str], list[list[str]]]:
    """The curves as a table: a column per step (named by its classes seen), a row per method."""
    points = curves(scores)
    header = ["method"] + [f"{p.classes_seen} classes" for p in points if p.method == points[0].method]
    rows = [[m] + [f"{p.mean:.2f} ± {p.std:.2f}" for p in points if p.method == m]
            for m in dict.fromkeys(p.method for p in points)]
    return header, rows


def write_results(run: RunDir, scores: list[StepScore]) -> None:
    storage.write_parquet_atomic(run.path("continual", "results.parquet"),
                                 pa.Table.from_pylist([asdict(s) for s in scores]))
    storage.write_bytes_atomic(run.path("continual", "accuracy.png"), curves_png(scores))
    storage.write_bytes_atomic(run.path("continual", "report.md"), report_md(run, scores).encode())


def report_md(run: RunDir, scores: list[StepScore]) -> str:
    header, rows = curve_table(scores)
    e = run.config.evaluate
    protocol = (f"{run.config.continual.steps} steps; memory of {run.config.condense.ipc} images per class seen; "
                f"networks trained from scratch on the memory alone ({e.num_models} x {e.epochs} epochs), "
                "scored on the test images of the classes seen (%).")
    lines = [f"# {run.config.name}: class-incremental learning", "", protocol, "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + ["", "![accuracy against classes seen](accuracy.png)", ""])


def curves_png(scores: list[StepScore]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4))
    points = curves(scores)
    for method in dict.fromkeys(p.method for p in points):
        mine = [p for p in points if p.method == method]
        ax.errorbar([p.classes_seen for p in mine], [p.mean for p in mine], yerr=[p.std for p in mine],
                    marker="o", capsize=3, label=method)
    ax.set_xlabel("classes seen")
    ax.set_ylabel("test accuracy on the classes seen (%)")
    ax.set_title("class-incremental: networks trained on the memory alone", fontsize=10)
    ax.legend(fontsize=8)
    return png(fig)
