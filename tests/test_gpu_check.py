"""benchmarks/gpu_check.sh runs every part and ends in its table (here on the CPU, tiny): the
script a GPU machine runs in one go does not rot between GPU checks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.ray


def test_the_gpu_check_runs_every_part_and_prints_one_table(tmp_path):
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "table.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    parts = ["machine", "DM loop, 10 ipc", "DM loop, 50 ipc", "evaluation", "recipes", "end to end"]
    assert [next(p for p in parts if row.startswith(f"| {p}")) for row in rows] == parts
    assert table.count("| ok, ") == 5, table  # every part ran and finished
    assert "speed-up" in table and "deterministic=on" in table and "vmapped" in table and "| dm " in table
    assert all(f"{recipe} " in table.split("| recipes")[1] for recipe in ("m3d", "idm", "dance", "ncfm"))
