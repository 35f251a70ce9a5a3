"""The prepared dataset format (Parquet) and its per-class reader.

Layout of ROOT (a local path or any pyarrow.fs URI)::

    meta.json                            written last: its presence marks completion
    prepare.json                         the preparation's plan (source, resolution, range size)
    train/classes-00000-00009.parquet    one file per class range (inclusive ids)
    test/part-00000.parquet              the test split, in parts
    commits/train/classes-00000-00009.json   each file's commit record (counts, pixel sums, sha256)

train/ and test/ hold nothing but Parquet, so any Parquet reader (pyarrow.dataset,
DuckDB, pandas) can open them as datasets.

Columns: ``class_id`` int32, ``class_name`` string, ``image`` fixed-shape tensor
uint8 [C, H, W]. Train files are sorted by ``class_id`` with one row group per
class, so a reader opens only the files whose range covers the classes it
wants and, inside them, only the row groups whose class_id statistics match.

Measured (tests/test_prepared.py, an ImageNet-like layout: 100 classes x 20
images 64x64 in 10 ranges of 10 classes, 24.7 MB of Parquet): one shard's read
of the 10 classes of one range reads 10.2% of the dataset's bytes, all from
that range's file (10.0% of the bytes, plus the 64 KiB tail that a Parquet
reader fetches first to find the footer); 10 classes straddling two ranges
read 10.5%, from those two files only; a single class reads 1.3%.

mean/std in meta.json are per channel over every train pixel, in [0, 1] units,
combined from exact per-range integer sums.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from .fingerprint import fingerprint
from .tensor_table import table_arrays
from .types import ChannelStats, DatasetError, DatasetInfo, ImageSet, check_class_ids
from .uri import join, resolve

FORMAT = "dmcondense-prepared"
FORMAT_VERSION = 1
META = "meta.json"
TRAIN_DIR = "train"
TEST_DIR = "test"
COMMITS_DIR = "commits"
PARQUET_OPTIONS = {"compression": "zstd"}  # uint8 pixels: dictionary encoding + zstd


def train_file(first: int, last: int) -> str:
    """Relative path of the file holding classes first..last (inclusive)."""
    return f"{TRAIN_DIR}/classes-{first:05d}-{last:05d}.parquet"


def test_file(part: int) -> str:
    return f"{TEST_DIR}/part-{part:05d}.parquet"


def commit_record(data_file: str) -> str:
    """The commit record (JSON) of a data file."""
    return f"{COMMITS_DIR}/{data_file[: -len('.parquet')]}.json"


@dataclass
class _Location:
    """Where the dataset lives: a filesystem and the root path inside it."""

    fs: pafs.FileSystem
    root: str

    def path(self, relative: str) -> str:
        return posixpath.join(self.root, relative)

    def read_json(self, relative: str) -> dict:
        with self.fs.open_input_stream(self.path(relative)) as stream:
            return json.loads(stream.read())


def read_meta(root: str) -> dict:
    fs, path = resolve(root)
    return _load_meta(_Location(fs, path), root)


def _load_meta(loc: _Location, shown: str) -> dict:
    try:
        meta = loc.read_json(META)
    except FileNotFoundError as err:
        raise DatasetError(
            f"dataset.root: expected {join(shown, META)}: not a prepared dataset, or its preparation did not "
            "finish; run (or re-run, it resumes) `dmcondense prepare SOURCE --out` to that location"
        ) from err
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{join(shown, META)}: format {meta.get('format')} v{meta.get('format_version')} is not "
            f"{FORMAT} v{FORMAT_VERSION}; prepare the dataset again with this version"
        )
    return meta


class PreparedReader:
    """A ``DatasetReader`` over a prepared dataset; ``read_train`` reads only what it needs.

    ``filesystem`` (optional) reads ROOT as a path inside that filesystem instead
    of resolving it, e.g. to account for bytes read.
    """

    def __init__(
        self, root: str, *, resolution: int | None = None, filesystem: pafs.FileSystem | None = None
    ) -> None:
        fs, path = (filesystem, root) if filesystem is not None else resolve(root)
        self._loc = _Location(fs, path)
        self.meta = _load_meta(self._loc, root)
        size = int(self.meta["resolution"])
        if resolution is not None and resolution != size:
            raise DatasetError(
                f"{root} was prepared at resolution {size}, not {resolution}; drop dataset.resolution "
                f"or prepare again with --resolution {resolution}"
            )
        m = self.meta
        self.info = DatasetInfo(
            m["source"], list(m["classes"]), int(m["channels"]), (size, size), tuple(m["mean"]), tuple(m["std"]),
            tuple(m["train_counts"]), tuple(m["test_counts"]),
        )

    def class_fingerprints(self) -> list[str]:
        """Per class: its count and the sha256 of the file that holds it, from the manifest alone."""
        m = self.meta
        holder = {c: e["sha256"] for e in m["train_files"] for c in range(e["first_class"], e["last_class"] + 1)}
        return [fingerprint(name, m["train_counts"][c], (holder.get(c, "").encode(),))
                for c, name in enumerate(m["classes"])]

    def read_train(self, class_ids: Sequence[int]) -> ImageSet:
        wanted = check_class_ids(class_ids, self.info.num_classes)
        tables = [
            self._read_groups(entry["file"], wanted)
            for entry in self.meta["train_files"]
            if any(entry["first_class"] <= c <= entry["last_class"] for c in wanted)
        ]
        return self._image_set(tables, wanted)

    def read_test(self) -> ImageSet:
        tables = [self._read_groups(entry["file"], None) for entry in self.meta["test_files"]]
        return self._image_set(tables, None)

    def _read_groups(self, relative: str, wanted: list[int] | None) -> pa.Table:
        """The row groups of one file that may hold ``wanted`` classes (all when None)."""
        with self._loc.fs.open_input_file(self._loc.path(relative)) as f:
            parquet = pq.ParquetFile(f)
            groups = range(parquet.num_row_groups)
            if wanted is not None:
                groups = [g for g in groups if _group_may_hold(parquet.metadata.row_group(g), wanted)]
            return parquet.read_row_groups(list(groups), columns=["class_id", "image"])

    def _image_set(self, tables: list[pa.Table], wanted: list[int] | None) -> ImageSet:
        c, (h, w) = self.info.channels, self.info.im_size
        arrays = [table_arrays(t) for t in tables] or [(np.empty((0, c, h, w), np.uint8), np.empty(0, np.int64))]
        x, y = np.concatenate([a[0] for a in arrays]), np.concatenate([a[1] for a in arrays])
        if wanted is not None:  # row groups may be wider than the wanted classes
            keep = np.isin(y, wanted)
            x, y = x[keep], y[keep]
            order = np.argsort(y, kind="stable")
            x, y = x[order], y[order]
        self._check(x, y)
        return ImageSet(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))

    def _check(self, images: np.ndarray, labels: np.ndarray) -> None:
        expected = (self.info.channels, *self.info.im_size)
        if images.shape[1:] != expected:
            raise DatasetError(f"prepared images have shape {images.shape[1:]}, meta.json says {expected}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.info.num_classes):
            raise DatasetError(f"prepared labels out of range 0..{self.info.num_classes - 1}; prepare again")


def _group_may_hold(group: pq.RowGroupMetaData, wanted: list[int]) -> bool:
    for i in range(group.num_columns):
        column = group.column(i)
        if column.path_in_schema == "class_id":
            stats = column.statistics
            if stats is None or not stats.has_min_max:
                return True
            return any(stats.min <= c <= stats.max for c in wanted)
    return True


def build_meta(
    *,
    source: str,
    resolution: int,
    channels: int,
    class_names: Sequence[str],
    train_records: Sequence[dict],
    test_records: Sequence[dict],
    extra: dict | None = None,
) -> dict:
    """meta.json from the commit records of every train range and test part.

    A train record holds ``file``, ``first_class``, ``last_class``, ``rows``,
    ``bytes``, ``sha256``, ``counts`` (per class of its range), ``stats`` (a
    ``ChannelStats`` dict) and ``skipped``; a test record the same minus the
    class range and stats, with ``counts`` over all classes.
    """
    k = len(class_names)
    train_counts = [0] * k
    stats = ChannelStats(channels)
    for record in train_records:
        for offset, n in enumerate(record["counts"]):
            train_counts[record["first_class"] + offset] = n
        stats.merge(ChannelStats.from_dict(record["stats"]))
    test_counts = [sum(r["counts"][c] for r in test_records) for c in range(k)]
    mean, std = stats.mean_std()
    keys = ("file", "rows", "bytes", "sha256")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": source,
        "resolution": resolution,
        "channels": channels,
        "classes": list(class_names),
        "train_counts": train_counts,
        "test_counts": test_counts,
        "mean": list(mean),
        "std": list(std),
        "pixel_sums": stats.to_dict(),
        "train_files": [
            {**{key: r[key] for key in keys}, "first_class": r["first_class"], "last_class": r["last_class"]}
            for r in sorted(train_records, key=lambda r: r["first_class"])
        ],
        "test_files": [{key: r[key] for key in keys} for r in sorted(test_records, key=lambda r: r["file"])],
        "skipped": [s for r in (*train_records, *test_records) for s in r["skipped"]],
        **(extra or {}),
    }
