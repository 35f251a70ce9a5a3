"""benchmarks/paper_protocol.sh runs the pool, DM and every recipe and ends in its table (here on
the offline digits, tiny, on the CPU): the script that runs the papers' protocol on a GPU machine
with CIFAR-10 does not rot while no such machine is at hand."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from benchmarks.paper_protocol_table import table

from .conftest import REPO

SCRIPT = str(REPO / "benchmarks" / "paper_protocol.sh")


@pytest.mark.ray
def test_the_paper_protocol_runs_every_set_and_tabulates_each_against_its_paper(tmp_path):
    env = {**os.environ, "PAPER_PROTOCOL_TINY": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", SCRIPT, str(tmp_path)], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [ln.split(" | ") for ln in (tmp_path / "table.md").read_text().splitlines()[2:]]
    assert [r[0] for r in rows] == ["| dm", "| herding", "| random", "| m3d", "| idm", "| dance", "| ncfm"]
    assert all(r[2] == "1 x 1" and "±" in r[3] for r in rows)  # every set scored, as the tiny protocol asks
    assert [r[1] for r in rows] == ["2", "-", "-", "2", "2", "2", "2"]  # iterations of the sets, not the baselines
    shutil.rmtree(tmp_path / "idm")
    assert "| idm | not run | | | | |" in table(tmp_path)


def test_the_papers_protocol_asks_for_cifar10_before_it_starts(tmp_path):
    done = subprocess.run(["bash", SCRIPT, str(tmp_path / "absent")], cwd=REPO, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PAPER_PROTOCOL_TINY"}, timeout=60)
    assert done.returncode == 2 and "CIFAR10_ROOT" in done.stderr and "fetch.sh" in done.stderr
    assert not (REPO / "paper-protocol").exists()
