"""The scores of a run's evaluation in its directory: RUN/eval/results.parquet (one row per
(method, model, seed)), the partial scores of an unfinished evaluation under
RUN/eval/partial/<settings key>/ (one file per finished job), and their summaries.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from orchestrator import storage
from orchestrator.config import RunConfig

SNAPSHOT_PREFIX = "dm@"


def snapshot_iteration(method: str) -> int | None:
    """The iteration of a ``dm@<iteration>`` method (a kept checkpoint); None for any other."""
    rest = method[len(SNAPSHOT_PREFIX):] if method.startswith(SNAPSHOT_PREFIX) else ""
    return int(rest) if rest.isdigit() else None


def results_path(run: str) -> str:
    return storage.join(run, "eval", "results.parquet")


def partial_root(run: str) -> str:
    return storage.join(run, "eval", "partial")


def partial_dir(run: str, cfg: RunConfig) -> str:
    """Where an unfinished evaluation keeps its scores, keyed by every setting that shapes a
    score, so that a later evaluation under other settings never reuses them."""
    e = cfg.evaluate
    shaping = {"epochs": e.epochs, "batch": e.batch, "lr": e.lr, "vectorized": e.vectorized,
               "dsa_strategy": cfg.condense.dsa_strategy}
    key = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
    return storage.join(partial_root(run), key)


def _read_rows(uri: str) -> list[dict[str, Any]]:
    return pq.read_table(pa.BufferReader(storage.read_bytes(uri))).to_pylist()


def read_partial(folder: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in storage.list_names(folder):
        if name.endswith(".parquet"):
            rows += _read_rows(storage.join(folder, name))
    return rows


def write_partial(folder: str, rows: list[dict[str, Any]]) -> None:
    """One file per finished job, named by its networks (a rerun of the job rewrites it)."""
    first = rows[0]
    name = hashlib.sha256(f"{first['method']}|{first['model']}|{first['seed']}".encode()).hexdigest()[:16]
    storage.write_parquet_atomic(storage.join(folder, f"{name}.parquet"), pa.Table.from_pylist(rows))


def method_key(method: str) -> tuple[str, int]:
    """dm@200 before dm@1000: snapshots in iteration order after their method."""
    iteration = snapshot_iteration(method)
    return (method, -1) if iteration is None else ("dm", iteration)


def read_results(run: str) -> list[dict[str, Any]]:
    """The rows of RUN/eval/results.parquet ([] before any evaluation)."""
    path = results_path(run)
    return _read_rows(path) if storage.exists(path) else []


def evaluation_state(run: str) -> dict[str, Any]:
    """What the run directory says of the evaluation stage: "unfinished" while scores of a
    stopped attempt wait under eval/partial/, else "done" or "not run"."""
    root = partial_root(run)
    waiting = sum(len(read_partial(storage.join(root, key))) for key in storage.list_names(root))
    if waiting:
        return {"state": "unfinished", "networks_scored": waiting}
    done = len(read_results(run))
    return {"state": "done" if done else "not run", "networks_scored": done}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """mean +- std (percent) per (method, model), in the order methods first appear."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["model"]), []).append(100.0 * r["accuracy"])
    out = []
    for (method, model), accs in groups.items():
        t = torch.tensor(accs, dtype=torch.float64)
        std = float(t.std(unbiased=False)) if len(accs) > 1 else 0.0
        out.append({"method": method, "model": model, "n": len(accs), "mean": float(t.mean()), "std": std})
    return out
