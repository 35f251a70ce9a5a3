"""Class-incremental learning's results: RUN/continual/results.parquet (one row per network and
step), the curves as a table (report.md; their picture, accuracy.png: ``components.pictures``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow as pa

from orchestrator import storage
from orchestrator.artifacts.score_statistics import summarize
from orchestrator.run_dir import RunDir
from workers.data.tensor_table import from_parquet_bytes


@dataclass(frozen=True)
class StepScore:
    step: int
    classes_seen: int
    method: str
    model: str
    seed: int
    accuracy: float  # on the test images of the classes seen


@dataclass(frozen=True)
class CurvePoint:
    method: str
    step: int
    classes_seen: int
    mean: float  # percent, over the networks of the first model trained
    std: float


def results_uri(run: RunDir) -> str:
    return run.path("continual", "results.parquet")


def read_results(run: RunDir) -> list[StepScore]:
    """The rows of RUN/continual/results.parquet ([] before the first continual run ends)."""
    if not storage.exists(results_uri(run)):
        return []
    return [StepScore(**row) for row in from_parquet_bytes(storage.read_bytes(results_uri(run))).to_pylist()]


def write_results(run: RunDir, scores: list[StepScore]) -> None:
    storage.write_parquet_atomic(results_uri(run), pa.Table.from_pylist([asdict(s) for s in scores]))
    storage.write_bytes_atomic(run.path("continual", "report.md"), report_md(run, scores).encode())


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


def report_md(run: RunDir, scores: list[StepScore]) -> str:
    header, rows = curve_table(scores)
    e = run.config.evaluate
    protocol = (f"{run.config.continual.steps} steps; memory of {run.config.condense.ipc} images per class seen; "
                f"networks trained from scratch on the memory alone ({e.num_models} x {e.protocol_epochs} epochs), "
                "scored on the test images of the classes seen (%).")
    lines = [f"# {run.config.name}: class-incremental learning", "", protocol, "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + ["", "![accuracy against classes seen](accuracy.png)", ""])
