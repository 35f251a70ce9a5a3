"""The sets a run's networks train on, by method: ``dm`` (the committed shards), a coreset
baseline (``random``, ``herding``, ...), ``dm@<iteration>`` (a kept checkpoint).

The driver resolves a method once per stage into a ``TrainingSet``: the files to read, with
the sha256 their manifests recorded, and a key of the data's identity (scores of other
data are never reused). Whoever loads it hashes the bytes as it reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from orchestrator import commands, commits
from orchestrator.artifacts.selections import selection_state
from orchestrator.artifacts.shards import read_snapshot, shard_state, snapshot_iteration
from orchestrator.commits import FileEntry
from orchestrator.errors import RunError
from orchestrator.plan import ShardSpec
from orchestrator.run_dir import RunDir
from workers.data.tensor_table import from_parquet_bytes, table_arrays
from workers.parameterize import decode


@dataclass(frozen=True)
class TrainingSet:
    method: str
    data_key: str
    files: tuple[FileEntry, ...] = ()  # committed Parquet files (dm, baselines)
    snapshots: tuple[str, ...] = ()  # kept checkpoints, relative paths (dm@<iteration>)
    factor: int = 1  # each stored image decodes to factor^2 training images (condense.factor)


def training_set(run: RunDir, method: str) -> TrainingSet:
    """Where ``method``'s images are, every file checked once against its manifest's sha256, so
    that a corrupt unit is named here, with the command that mends it, before any work starts."""
    iteration = snapshot_iteration(method)
    if iteration is not None:
        paths = tuple(run.relative(run.snapshot(spec, iteration)) for spec in run.shards)
        return TrainingSet(method, f"{run.record.units_key}@{iteration}", snapshots=paths,
                           factor=run.config.condense.factor)
    key = data_key(run, method)
    files = committed_files(run, method, run.shards)
    return TrainingSet(method, key, files=files, factor=run.config.condense.factor if method == "dm" else 1)


def committed_files(run: RunDir, method: str, specs: Sequence[ShardSpec], *, deep: bool = True) -> tuple[FileEntry, ...]:
    """``method``'s committed file of each shard of ``specs``, each checked against its manifest's
    sha256 (unless not ``deep``: a reader that loads them at once hashes them as it reads); a
    unit that is not committed is named with the command that computes it."""
    files = []
    for spec in specs:
        st = shard_state(run, spec, deep=deep) if method == "dm" else selection_state(run, spec, method, deep=deep)
        if st.state == "foreign":
            raise RunError(f"{spec.name} was {st.detail}; this run would not reproduce it: give a run of this "
                           "configuration its own directory with --out")
        if st.state != "committed":
            what = spec.name if method == "dm" else f"the {method} selection of {spec.name}"
            fix = commands.resume(run.uri) if method == "dm" else commands.evaluate(run.uri)
            raise RunError(f"{what} is {st.state} {st.detail}; `{fix}` computes it first")
        files.append(st.manifest.files[method])  # type: ignore[union-attr]
    return tuple(files)


def data_key(run: RunDir, method: str) -> str:
    """The identity of a method's whole set: its shards' selections and the plan they cover."""
    if method == "dm":
        return run.record.units_key
    return f"{run.resolved.baseline_identities[method]}-{run.record.units_key}"


def load(run: RunDir, ts: TrainingSet) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images float32 [N, C, H, W] (stored images decoded) and their class ids
    int64, sorted by class."""
    images, labels = [], []
    for entry in ts.files:
        x, y = table_arrays(from_parquet_bytes(commits.read_checked(run, entry)))
        images.append(torch.from_numpy(x.copy()))
        labels.append(torch.from_numpy(y))
    for path in ts.snapshots:
        x, y = read_snapshot(run, path)
        images.append(x)
        labels.append(y)
    x, y = decode(torch.cat(images), ts.factor), torch.cat(labels).repeat_interleave(ts.factor**2)
    order = torch.argsort(y, stable=True)
    return x[order], y[order]


def read_method(run: RunDir, method: str = "dm") -> tuple[torch.Tensor, torch.Tensor]:
    return load(run, training_set(run, method))
