"""Storage for run directories and prepared datasets: local paths or pyarrow.fs URIs.

Supported locations: plain local paths (made absolute), ``file://`` URIs, and
any URI ``pyarrow.fs.FileSystem.from_uri`` accepts (``s3://``, ``gs://``,
``hdfs://``), including its query options; for an S3-compatible endpoint:
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http`` (credentials
come from the usual AWS environment variables or config files).

Atomic writes: data goes to a temporary sibling (``.tmp-<random>-<name>``) and is
then moved onto the final name, so the final name appears only complete. On a
local disk the move is a rename; on object stores it is copy + delete, which
still makes the final key appear only once complete. A write that fails removes
its temporary; one killed outright may leave it behind, and ``list_names`` hides
such leftovers.

Transient errors: every operation retries an ``OSError`` from the filesystem (a
dropped connection, a throttled request) under ``RETRY``: at most 6 attempts,
exponential backoff from 0.2 s doubling to at most 4 s, each wait jittered
between its half and its whole (so drivers that failed together do not retry
together): at most 6.2 s of waiting, and no attempt starts later than 30 s after
the first. Errors that a retry cannot change (missing file, permission) are not
retried. An error that lasts ends in a ``StorageError``: one line naming the
operation, the location and the last error. Retries keep writes atomic: a
retried write goes to the temporary again, and a retried move first checks
whether the lost attempt already moved the temporary (it is gone and the final
name is there), so the final name only ever appears complete, and a lasting
failure leaves the old version (or nothing) under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import posixpath
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers.data import uri as locations
from workers.data.uri import join

__all__ = [
    "TMP_PREFIX", "RETRY", "RetryPolicy", "StorageError", "resolve", "mounted", "join", "relative", "ensure_dir",
    "exists", "read_bytes", "write_bytes_atomic", "read_json", "write_json_atomic", "write_parquet_atomic",
    "list_names", "remove", "sha256_of", "mtime_ns",
]

TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20
T = TypeVar("T")


class StorageError(OSError):
    """A storage operation that still failed after every retry."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a transient error is retried (the module docstring gives the numbers of ``RETRY``)."""

    attempts: int = 6
    first_delay_s: float = 0.2
    max_delay_s: float = 4.0
    total_s: float = 30.0  # no attempt starts later than this after the first

    def delay_s(self, failures: int) -> float:
        """The wait after the ``failures``-th failure: exponential, jittered over its upper half."""
        full = min(self.max_delay_s, self.first_delay_s * 2 ** (failures - 1))
        return full / 2 + random.uniform(0, full / 2)


RETRY = RetryPolicy()
# Answers a retry cannot change: the caller handles them (a missing file is often expected).
_LASTING = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def _retrying(op: str, uri: str, attempt: Callable[[], T]) -> T:
    policy, started, failures = RETRY, time.monotonic(), 0
    while True:
        try:
            return attempt()
        except _LASTING:
            raise
        except OSError as exc:
            failures += 1
            wait = policy.delay_s(failures)
            elapsed = time.monotonic() - started
            if failures >= policy.attempts or elapsed + wait > policy.total_s:
                last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise StorageError(f"could not {op} {uri}: {failures} attempts in {elapsed:.1f}s, "
                                   f"the last failed with: {last}") from exc
            time.sleep(wait)


# ------------------------------------------------------------------ locations
_MOUNTS: dict[str, tuple[pafs.FileSystem, str]] = {}


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it (``workers.data.uri.resolve``), mounts included."""
    split = urlsplit(location) if locations.is_uri(location) else None
    if split is not None and split.scheme in _MOUNTS:
        fs, root = _MOUNTS[split.scheme]
        return fs, root + split.path
    return locations.resolve(location)


@contextlib.contextmanager
def mounted(fs: pafs.FileSystem, root: str) -> Iterator[str]:
    """A location for ``root`` on ``fs`` while the context lasts; tests substitute filesystems this way.

    Its scheme is made up for it, so no real location changes meaning.
    """
    scheme = f"mounted-{uuid.uuid4().hex[:12]}"
    _MOUNTS[scheme] = (fs, root.rstrip("/"))
    try:
        yield f"{scheme}://mount"
    finally:
        del _MOUNTS[scheme]


def relative(base: str, path: str) -> str:
    """``path`` relative to ``base``; a URI's query string (endpoint options) belongs to neither."""
    if "://" in base:
        base, path = urlsplit(base).path, urlsplit(path).path
    return path[len(base.rstrip("/")) + 1 :]


def _has_directories(fs: pafs.FileSystem) -> bool:
    """Local disks need a file's parent made first; object stores have no directories.

    A filesystem written in Python (``PyFileSystem``) reports its handler's type after ``py::``.
    """
    return fs.type_name.removeprefix("py::") == "local"


def ensure_dir(uri: str) -> None:
    fs, path = resolve(uri)
    _retrying("create the directory", uri, lambda: fs.create_dir(path, recursive=True))


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return _retrying("check", uri, lambda: fs.get_file_info(path).type != pafs.FileType.NotFound)


def _read_all(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    return _retrying("read", uri, lambda: _read_all(fs, path))


def _write_stream(fs: pafs.FileSystem, path: str, write: Callable[[Any], None]) -> None:
    with fs.open_output_stream(path) as stream:
        write(stream)


def _mover(fs: pafs.FileSystem, tmp: str, path: str) -> Callable[[], None]:
    """A move to retry: a failed attempt may have moved the file and lost only its answer."""
    attempts = itertools.count()

    def move() -> None:
        if next(attempts) and _moved(fs, tmp, path):
            return
        fs.move(tmp, path)

    return move


def _moved(fs: pafs.FileSystem, tmp: str, path: str) -> bool:
    tmp_info, final_info = fs.get_file_info([tmp, path])
    return tmp_info.type == pafs.FileType.NotFound and final_info.type == pafs.FileType.File


def _atomic_write(uri: str, write: Callable[[Any], None]) -> None:
    """Run ``write(stream)`` into a temporary sibling, then move it onto ``uri``; both retried."""
    fs, path = resolve(uri)
    parent, name = posixpath.split(path)
    tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")
    try:
        if _has_directories(fs):
            _retrying("create the directory of", uri, lambda: fs.create_dir(parent, recursive=True))
        _retrying("write a temporary for", uri, lambda: _write_stream(fs, tmp, write))
        _retrying("move a temporary onto", uri, _mover(fs, tmp, path))
    except BaseException:
        _remove_quietly(fs, tmp)
        raise


def _remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass  # never written, already gone, or unreachable: a leftover temporary is hidden anyway


def write_bytes_atomic(uri: str, data: bytes) -> None:
    _atomic_write(uri, lambda stream: stream.write(data))


def read_json(uri: str) -> dict:
    return json.loads(read_bytes(uri))


def write_json_atomic(uri: str, obj: dict) -> None:
    # Serialise first: an unserialisable object fails before anything is written.
    data = json.dumps(obj, indent=2, sort_keys=True).encode()
    write_bytes_atomic(uri, data)


def write_parquet_atomic(uri: str, table: pa.Table, **kw: Any) -> None:
    """Write ``table`` as one Parquet file; ``kw`` goes to ``pyarrow.parquet.ParquetWriter``.

    Extra option ``row_group_by="column"``: one row group per run of equal values
    in that column (the table should be sorted by it), so readers can skip row
    groups by their statistics.
    """
    group_by = kw.pop("row_group_by", None)

    def write(stream: Any) -> None:
        with pq.ParquetWriter(stream, table.schema, **kw) as writer:
            for piece in _row_groups(table, group_by):
                writer.write_table(piece, row_group_size=max(piece.num_rows, 1))

    _atomic_write(uri, write)


def _row_groups(table: pa.Table, column: str | None) -> list[pa.Table]:
    if column is None or table.num_rows == 0:
        return [table]
    values = table.column(column).to_numpy()
    cuts = [0, *(np.flatnonzero(values[1:] != values[:-1]) + 1).tolist(), len(values)]
    return [table.slice(s, e - s) for s, e in zip(cuts[:-1], cuts[1:])]


def list_names(uri: str) -> list[str]:
    """Sorted base names in a directory; [] if it is missing. Temporaries are hidden."""
    fs, path = resolve(uri)
    infos = _retrying("list", uri, lambda: fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))
    names = (posixpath.basename(info.path.rstrip("/")) for info in infos)
    return sorted(n for n in names if n and not n.startswith(TMP_PREFIX))


def remove(uri: str, recursive: bool = False) -> None:
    """Delete a file, or a directory (its contents too only with ``recursive``).

    A missing path is not an error: removal is idempotent so that clean-ups can
    be retried.
    """
    fs, path = resolve(uri)
    kind = _retrying("check", uri, lambda: fs.get_file_info(path).type)
    if kind == pafs.FileType.NotFound:
        return
    if kind != pafs.FileType.Directory:
        _retrying("remove", uri, lambda: _gone_after(fs.delete_file, path))
        return
    if not recursive and _retrying("list", uri, lambda: fs.get_file_info(pafs.FileSelector(path))):
        raise OSError(f"{uri} is a non-empty directory; pass recursive=True to delete it")
    _retrying("remove", uri, lambda: _gone_after(fs.delete_dir, path))


def _gone_after(delete: Callable[[str], None], path: str) -> None:
    try:
        delete(path)
    except FileNotFoundError:
        pass  # an earlier attempt deleted it and only its answer was lost


def _hash(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of(uri: str) -> str:
    fs, path = resolve(uri)
    return _retrying("read", uri, lambda: _hash(fs, path))


def size(uri: str) -> int | None:
    """The file's length in bytes, None if missing."""
    fs, path = resolve(uri)
    info = _retrying("check", uri, lambda: fs.get_file_info(path))
    return None if info.type == pafs.FileType.NotFound else info.size


def mtime_ns(uri: str) -> int | None:
    """Last modification time in ns, None if missing (object stores: second resolution)."""
    fs, path = resolve(uri)
    info = _retrying("check", uri, lambda: fs.get_file_info(path))
    if info.type == pafs.FileType.NotFound:
        return None
    return info.mtime_ns
