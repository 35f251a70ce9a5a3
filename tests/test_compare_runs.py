"""benchmarks/compare_runs.py: the equivalence check of two run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.compare_runs import differences, main


def _shard(path: Path, pixels: list[float], config_hash: str) -> None:
    meta = {b"dmcondense": json.dumps({"config_hash": config_hash, "ipc": 1}).encode()}
    pq.write_table(pa.table({"image": pixels}).replace_schema_metadata(meta), path)


def _run(root: Path, shard: tuple[list[float], str], accuracy: float) -> Path:
    (root / "shards").mkdir(parents=True)
    (root / "baselines" / "random").mkdir(parents=True)
    (root / "eval").mkdir()
    _shard(root / "shards" / "shard-00000.parquet", *shard)
    (root / "baselines" / "random" / "shard-00000.parquet").write_bytes(b"selection")
    pq.write_table(pa.table({"method": ["dm", "random"], "model": ["ConvNet"] * 2, "seed": [7, 7],
                             "accuracy": [accuracy, 0.5]}), root / "eval" / "results.parquet")
    return root


def test_equal_runs_compare_identical_and_each_kind_of_difference_is_named(tmp_path, capsys):
    a = _run(tmp_path / "a", ([0.5, 0.25], "h1"), 0.9)
    assert differences(a, _run(tmp_path / "b", ([0.5, 0.25], "h1"), 0.9)) == ([], [])
    assert main([str(a), str(tmp_path / "b")]) == 0
    assert "2 unit files and 2 scores compared: identical" in capsys.readouterr().out

    # a new config key changes the hash a shard records, not its rows: a note, not a difference
    diffs, notes = differences(a, _run(tmp_path / "m", ([0.5, 0.25], "h2"), 0.9))
    assert diffs == [] and notes == ["file shards/shard-00000.parquet: same rows, metadata differs in config_hash"]

    other, _ = differences(a, _run(tmp_path / "c", ([0.5, 0.75], "h1"), 0.8))
    assert len(other) == 2
    assert other[0].startswith("file shards/shard-00000.parquet:")
    assert other[1] == "score ('dm', 'ConvNet', 7): 0.9 != 0.8"

    (tmp_path / "c" / "baselines" / "random" / "shard-00000.parquet").unlink()
    assert any("only in" in line and "baselines/random" in line for line in differences(a, tmp_path / "c")[0])
    assert main([str(a), str(tmp_path / "c")]) == 1
