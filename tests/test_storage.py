"""orchestrator.storage on local paths and on S3 (a moto server on loopback)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import storage

from .conftest import moto_s3


def _table(n_groups: int = 3) -> pa.Table:
    ids = [g for g in range(n_groups) for _ in range(4)]
    return pa.table({"class_id": pa.array(ids, pa.int32()), "value": pa.array(range(len(ids)), pa.int64())})


def _row_groups(uri: str) -> list[list[int]]:
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        return [parquet.read_row_group(g).column("class_id").to_pylist() for g in range(parquet.num_row_groups)]


def _exercise(base: str) -> None:
    """The whole API against one base location."""
    blob = storage.join(base, "a", "blob.bin")
    assert not storage.exists(blob) and storage.mtime_ns(blob) is None
    storage.write_bytes_atomic(blob, b"hello" * 1000)
    assert storage.read_bytes(blob) == b"hello" * 1000
    assert storage.sha256_of(blob) == hashlib.sha256(b"hello" * 1000).hexdigest()
    assert isinstance(storage.mtime_ns(blob), int)

    doc = storage.join(base, "a", "doc.json")
    storage.write_json_atomic(doc, {"k": [1, 2], "s": "x"})
    assert storage.read_json(doc) == {"k": [1, 2], "s": "x"}
    assert storage.list_names(storage.join(base, "a")) == ["blob.bin", "doc.json"]
    assert storage.list_names(storage.join(base, "missing")) == []

    table_uri = storage.join(base, "t", "data.parquet")
    storage.write_parquet_atomic(table_uri, _table(3), row_group_by="class_id", compression="zstd")
    assert _row_groups(table_uri) == [[0] * 4, [1] * 4, [2] * 4]

    with pytest.raises(OSError, match="recursive"):
        storage.remove(storage.join(base, "a"))
    storage.remove(blob)
    assert not storage.exists(blob)
    storage.remove(storage.join(base, "a"), recursive=True)
    assert not storage.exists(doc)
    storage.remove(storage.join(base, "a"))  # already gone: idempotent


def test_local_roundtrip(tmp_path):
    _exercise(str(tmp_path / "base"))


def test_relative_paths_resolve_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = storage.resolve("rel/dir")
    assert path == os.path.join(str(tmp_path), "rel", "dir")
    storage.write_bytes_atomic("rel/dir/x", b"1")
    assert (tmp_path / "rel" / "dir" / "x").read_bytes() == b"1"


def test_join_keeps_uri_query():
    base = "s3://bucket/run?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(base, "shards", "s.parquet") == (
        "s3://bucket/run/shards/s.parquet?endpoint_override=127.0.0.1:9000&scheme=http"
    )
    assert storage.join("s3://bucket", "x") == "s3://bucket/x"
    assert storage.join("/a/b", "c", "d") == "/a/b/c/d"


class _Boom(RuntimeError):
    pass


def _fail_on_second_row_group(monkeypatch):
    original = pq.ParquetWriter.write_table
    calls = {"n": 0}

    def write_table(self, table, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Boom("disk full")
        return original(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    return calls


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = str(tmp_path / "d" / "data.parquet")
    storage.write_parquet_atomic(target, _table(1))
    before = open(target, "rb").read()
    calls = _fail_on_second_row_group(monkeypatch)
    with pytest.raises(_Boom):
        storage.write_parquet_atomic(target, _table(3), row_group_by="class_id")
    assert calls["n"] == 2  # it failed mid-file, after one row group went out
    assert open(target, "rb").read() == before  # the old version is untouched
    assert os.listdir(tmp_path / "d") == ["data.parquet"]  # and the temporary is cleaned up


def test_unserialisable_json_writes_nothing(tmp_path):
    target = str(tmp_path / "doc.json")
    with pytest.raises(TypeError):
        storage.write_json_atomic(target, {"x": object()})
    assert os.listdir(tmp_path) == []


_KILLED_WRITER = """
import sys, time
import pyarrow as pa, pyarrow.parquet as pq
from orchestrator import storage
original = pq.ParquetWriter.write_table
def slow(self, table, *a, **k):
    original(self, table, *a, **k)
    time.sleep(60)  # killed here, mid-file
pq.ParquetWriter.write_table = slow
table = pa.table({"class_id": pa.array([0, 0, 1, 1], pa.int32())})
storage.write_parquet_atomic(sys.argv[1], table, row_group_by="class_id")
"""


def test_killed_write_never_shows_a_partial_final_file(tmp_path):
    directory = tmp_path / "d"
    target = str(directory / "data.parquet")
    storage.write_bytes_atomic(target, b"old complete version")
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), target])
    try:
        deadline = time.time() + 30
        while not [n for n in os.listdir(directory) if n.startswith(storage.TMP_PREFIX)]:
            assert time.time() < deadline and proc.poll() is None, "the writer never started its temporary"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert storage.read_bytes(target) == b"old complete version"
    assert len(os.listdir(directory)) == 2  # the killed writer's temporary is left behind...
    assert storage.list_names(str(directory)) == ["data.parquet"]  # ...and hidden from listings


# ------------------------------------------------------------------ S3 (moto)
@pytest.fixture(scope="module")
def s3_base():
    with moto_s3("dmc-test") as endpoint:
        yield f"s3://dmc-test/base?endpoint_override={endpoint}&scheme=http"


def test_s3_roundtrip(s3_base):
    _exercise(s3_base)


def test_s3_failed_write_leaves_no_key(s3_base, monkeypatch):
    target = storage.join(s3_base, "fail", "data.parquet")
    _fail_on_second_row_group(monkeypatch)
    with pytest.raises(_Boom):
        storage.write_parquet_atomic(target, _table(3), row_group_by="class_id")
    assert not storage.exists(target)
    fs, path = storage.resolve(storage.join(s3_base, "fail"))
    from pyarrow.fs import FileSelector

    assert fs.get_file_info(FileSelector(path, allow_not_found=True)) == []  # no temporary either


def test_a_failure_records_traceback_sits_beside_it_on_a_uri_with_a_query():
    from orchestrator.ray_work import traceback_file

    assert traceback_file("/run/failed/condense/shard-00001.json") == "/run/failed/condense/shard-00001.traceback.txt"
    record = "s3://b/run/failed/condense/shard-00001.json?endpoint_override=127.0.0.1:9000&scheme=http"
    assert traceback_file(record) == ("s3://b/run/failed/condense/shard-00001.traceback.txt"
                                      "?endpoint_override=127.0.0.1:9000&scheme=http")
