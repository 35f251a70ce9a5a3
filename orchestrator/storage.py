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
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from workers.data.uri import join, resolve

__all__ = [
    "TMP_PREFIX", "resolve", "join", "relative", "ensure_dir", "exists", "read_bytes", "write_bytes_atomic",
    "read_json", "write_json_atomic", "write_parquet_atomic", "list_names", "remove",
    "sha256_of", "mtime_ns",
]

TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


def relative(base: str, path: str) -> str:
    """``path`` relative to ``base``; a URI's query string (endpoint options) belongs to neither."""
    if "://" in base:
        base, path = urlsplit(base).path, urlsplit(path).path
    return path[len(base.rstrip("/")) + 1 :]


def ensure_dir(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _atomic_write(uri: str, write: Callable[[Any], None]) -> None:
    """Run ``write(stream)`` into a temporary sibling, then move it onto ``uri``."""
    fs, path = resolve(uri)
    parent, name = posixpath.split(path)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(parent, recursive=True)  # object stores have no directories to make
    tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")
    try:
        with fs.open_output_stream(tmp) as stream:
            write(stream)
        fs.move(tmp, path)
    except BaseException:
        _remove_quietly(fs, tmp)
        raise


def _remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass  # never written, or already gone: nothing to clean


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
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = (posixpath.basename(info.path.rstrip("/")) for info in infos)
    return sorted(n for n in names if n and not n.startswith(TMP_PREFIX))


def remove(uri: str, recursive: bool = False) -> None:
    """Delete a file, or a directory (its contents too only with ``recursive``).

    A missing path is not an error: removal is idempotent so that clean-ups can
    be retried.
    """
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        return
    if kind != pafs.FileType.Directory:
        fs.delete_file(path)
        return
    if not recursive and fs.get_file_info(pafs.FileSelector(path)):
        raise OSError(f"{uri} is a non-empty directory; pass recursive=True to delete it")
    fs.delete_dir(path)


def sha256_of(uri: str) -> str:
    fs, path = resolve(uri)
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def mtime_ns(uri: str) -> int | None:
    """Last modification time in ns, None if missing (object stores: second resolution)."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    return info.mtime_ns
