"""The prepare stage: a raw source -> the prepared Parquet format, once, as Ray tasks.

One Ray task per class range (and per test part): each opens the source itself,
decodes only its own classes at the target resolution, writes its Parquet file
straight to OUT (atomically), then its commit record (counts, exact pixel sums,
sha256, skipped files). The driver sees only those small records; it combines
the sums into mean/std and writes meta.json last.

Resumable: OUT/prepare.json pins the plan (source, resolution, classes, range
size); a re-run skips every range whose commit record matches the plan and
whose Parquet file has the recorded size, and computes only the rest. A failed
task does not stop the others: they commit, and the re-run finishes the job.
The file format is described in ``workers.data.prepared``.
"""

from __future__ import annotations

import functools
import os
import uuid
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.fs as pafs
from rich.console import Console

from orchestrator import storage
from orchestrator.stage_runner import Unit, UnitStage, run_units
from workers.data import DatasetError, check_source, open_source
from workers.data.base import Loaded, Source
from workers.data.prepared import FORMAT_VERSION, META, PARQUET_OPTIONS, build_meta, commit_record, test_file, train_file
from workers.data.tensor_table import tensor_table
from workers.data.sources import default_root
from workers.data.types import ChannelStats

PLAN = "prepare.json"
DEFAULT_CLASSES_PER_TASK = 10  # ImageNet-1K: 100 tasks of ~13k images (~160 MB at 64x64) each
TEST_PART_SIZE = 10_000


@dataclass(frozen=True)
class SourceSpec:
    """What a task needs to open the source itself (no pixels travel from the driver)."""

    name: str
    root: str
    resolution: int
    run_token: str  # new per run: a worker's cached source never outlives the run that opened it

    def open(self) -> Source:
        return _open_cached(self)


@functools.lru_cache(maxsize=1)
def _open_cached(spec: SourceSpec) -> Source:
    # A Ray worker runs many tasks of one preparation: open (list, load arrays) once.
    return open_source(spec.name, spec.root, resolution=spec.resolution)


@dataclass(frozen=True)
class Job:
    """One train class range [first, last] or one test part [start, stop)."""

    split: str  # "train" | "test"
    first: int
    last: int

    @property
    def file(self) -> str:
        if self.split == "train":
            return train_file(self.first, self.last)
        return test_file(self.first // TEST_PART_SIZE)


def plan_jobs(num_classes: int, classes_per_task: int, test_size: int) -> list[Job]:
    train = [
        Job("train", lo, min(lo + classes_per_task, num_classes) - 1) for lo in range(0, num_classes, classes_per_task)
    ]
    test = [Job("test", lo, min(lo + TEST_PART_SIZE, test_size)) for lo in range(0, test_size, TEST_PART_SIZE)]
    return train + test


# ------------------------------------------------------------------ the task body
def run_job(spec: SourceSpec, out: str, strict: bool, job: Job) -> dict:
    """Decode one job's images, write its Parquet file, then its commit record; return the record."""
    source = spec.open()
    if job.split == "train":
        loaded = source.load_train(range(job.first, job.last + 1), strict=strict)
    else:
        loaded = source.load_test(job.first, job.last, strict=strict)
    table = tensor_table(loaded.images, loaded.labels, source.class_names)
    data_uri = storage.join(out, job.file)
    by_class = {"row_group_by": "class_id"} if job.split == "train" else {}  # test: read whole, keep order
    storage.write_parquet_atomic(data_uri, table, **by_class, **PARQUET_OPTIONS)
    record = _record(spec, job, loaded, len(source.class_names), data_uri)
    storage.write_json_atomic(storage.join(out, commit_record(job.file)), record)
    return record


def _record(spec: SourceSpec, job: Job, loaded: Loaded, num_classes: int, data_uri: str) -> dict:
    record = {
        "job": asdict(job),
        "source": spec.name,
        "resolution": spec.resolution,
        "file": job.file,
        "rows": len(loaded.labels),
        "bytes": _size(data_uri),
        "sha256": storage.sha256_of(data_uri),
        "skipped": [asdict(s) for s in loaded.skipped],
    }
    if job.split == "train":
        counts = np.bincount(loaded.labels - job.first, minlength=job.last - job.first + 1)
        stats = ChannelStats(loaded.images.shape[1]).add(loaded.images)
        record.update(first_class=job.first, last_class=job.last, counts=counts.tolist(), stats=stats.to_dict())
    else:
        record["counts"] = np.bincount(loaded.labels, minlength=num_classes).tolist()
    return record


def _size(uri: str) -> int | None:
    fs, path = storage.resolve(uri)
    info = fs.get_file_info(path)
    return None if info.type == pafs.FileType.NotFound else info.size


def committed_record(spec: SourceSpec, out: str, job: Job) -> dict | None:
    """The job's commit record if it is valid for this plan: same job, data file of the recorded size."""
    record_uri = storage.join(out, commit_record(job.file))
    if not storage.exists(record_uri):
        return None
    try:
        record = storage.read_json(record_uri)
    except ValueError:
        return None  # unreadable record: recompute
    same = record.get("job") == asdict(job) and record.get("source") == spec.name
    same = same and record.get("resolution") == spec.resolution
    if not same or _size(storage.join(out, job.file)) != record.get("bytes"):
        return None
    return record


# ------------------------------------------------------------------ the driver
def _check_plan(out: str, plan: dict) -> None:
    """Refuse to mix two different preparations in one OUT."""
    path = storage.join(out, PLAN)
    if not storage.exists(path):
        storage.write_json_atomic(path, plan)
        return
    existing = storage.read_json(path)
    differ = sorted(k for k in plan if k != "root" and existing.get(k) != plan[k])
    if differ:
        shown = {k: existing.get(k) for k in differ if k != "classes"}
        raise DatasetError(
            f"{out} holds another preparation (differs in {differ}: {shown}); "
            "re-run with the same settings, or choose another --out"
        )


def _existing_plan(out: str) -> dict:
    path = storage.join(out, PLAN)
    return storage.read_json(path) if storage.exists(path) else {}


def prepare(
    source: str,
    root: str | None,
    out: str,
    *,
    console: Console | None = None,
    resolution: int | None = None,
    strict: bool = False,
    classes_per_task: int | None = None,
    download: bool = False,
    in_process: bool = False,
) -> dict:
    """Prepare ``source`` into ``out`` and return meta.json's content.

    The tasks run on the Ray session the caller opened, or one by one here with
    ``in_process`` (small datasets, debugging). Raises ``DatasetError`` on bad input before
    any decoding, and ``StageFailed`` when tasks failed (the rest is committed: re-run to
    finish).
    """
    if not out:
        raise DatasetError("--out: give the prepared dataset's location (a path or a URI)")
    console = console or Console(stderr=True)
    existing = _existing_plan(out)  # a re-run without options resumes with the first run's settings
    resolution = resolution or existing.get("resolution")
    src = open_source(source, root, resolution=resolution, download=download)
    check_source(src)
    k = classes_per_task or existing.get("classes_per_task") or DEFAULT_CLASSES_PER_TASK
    if k < 1:
        raise DatasetError(f"--classes-per-task must be at least 1, got {k}")
    spec = SourceSpec(source, os.path.abspath(root or default_root()), src.resolution, uuid.uuid4().hex)
    plan = {
        "format_version": FORMAT_VERSION, "source": source, "root": spec.root, "resolution": src.resolution,
        "channels": src.channels, "classes": list(src.class_names), "classes_per_task": k,
        "test_part_size": TEST_PART_SIZE,
    }  # fmt: skip
    storage.ensure_dir(out)
    _check_plan(out, plan)
    jobs = plan_jobs(len(src.class_names), k, src.test_size())
    records = {job: committed_record(spec, out, job) for job in jobs}
    stage = UnitStage(f"prepare {source}", "tasks", "tasks", run_job, shared=(spec, out, strict))
    outcome = run_units(stage, [Unit(job.file, (job,), committed=records[job] is not None) for job in jobs], console,
                        in_process=in_process)
    by_file = {job.file: job for job in jobs}
    records.update({by_file[key]: record for key, record in outcome.results.items()})
    meta = build_meta(
        source=source, resolution=src.resolution, channels=src.channels, class_names=src.class_names,
        train_records=[r for j, r in records.items() if j.split == "train"],
        test_records=[r for j, r in records.items() if j.split == "test"],
        extra={"source_root": spec.root, "classes_per_task": k},
    )  # fmt: skip
    storage.write_json_atomic(storage.join(out, META), meta)
    _report_skipped(meta["skipped"], console)
    return meta


def _report_skipped(skipped: list[dict], console: Console) -> None:
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} undecodable file(s) (listed in {META}):[/]")
        for item in skipped[:20]:
            console.print(f"  {item['path']}: {item['reason']}")
