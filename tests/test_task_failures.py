"""Failed tasks on the console: one line per failed unit (its error's last line and where its
traceback is kept), never Ray's worker tracebacks; an error a retry cannot change (a permission,
a missing file) is not retried, one it can is, within resources.max_retries."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator import ray_work
from orchestrator.cli import main

from .conftest import REPO, sets, start_local_ray

CONFIG = str(REPO / "configs" / "digits.yaml")
RAY_NOISE = re.compile(r"\(raylet\)|\x1b\[|Traceback|retries remaining")


@pytest.fixture(scope="module")
def small_ray():
    """A 2-CPU local Ray; the task bodies below travel by value (workers cannot import tests/)."""
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _fails_until(marks: str, ok_from: int, error: str) -> str:
    """Appends a line to ``marks`` per attempt; raises ``error`` until attempt ``ok_from``."""
    with open(marks, "a") as f:
        f.write("attempt\n")
    attempts = len(Path(marks).read_text().splitlines())
    if attempts < ok_from:
        if error == "permission":
            raise PermissionError(13, "Permission denied", "/data/class-7")
        raise RuntimeError(f"flaky read, attempt {attempts}")
    return attempts


def test_a_lasting_error_is_not_retried_and_a_transient_one_is(small_ray, tmp_path, capfd):
    failed = tmp_path / "failed" / "stage"
    work = {  # key: (raises, succeeds from attempt)
        "lasting": ("permission", 2),  # a retry would succeed: proves it never came
        "flaky": ("runtime", 2),
        "broken": ("runtime", 99),
    }
    out = io.StringIO()
    outcome = ray_work.run_tasks(
        _fails_until,
        [ray_work.Work(key, (str(tmp_path / key), ok_from, error), failure=str(failed / f"{key}.json"))
         for key, (error, ok_from) in work.items()],
        options={"num_cpus": 1, "max_retries": 2, "retry_exceptions": True}, label="stage", unit="units",
        console=Console(file=out, width=300))
    attempts = {key: len((tmp_path / key).read_text().splitlines()) for key in work}
    assert attempts == {"lasting": 1, "flaky": 2, "broken": 3}
    assert outcome.results == {"flaky": 2}
    assert outcome.failed == {"lasting": "PermissionError: [Errno 13] Permission denied: '/data/class-7'",
                              "broken": "RuntimeError: flaky read, attempt 3"}

    lines = sorted(line for line in out.getvalue().splitlines() if line.startswith(tuple(work)))  # any order
    assert lines == sorted([
        f"lasting failed (not retried: a retry cannot change it): PermissionError: [Errno 13] Permission denied: "
        f"'/data/class-7'; traceback in {failed / 'lasting.traceback.txt'}",
        f"broken failed after 3 attempts: RuntimeError: flaky read, attempt 3; traceback in "
        f"{failed / 'broken.traceback.txt'}"])
    for key in ("lasting", "broken"):
        traceback = (failed / f"{key}.traceback.txt").read_text()
        assert traceback.startswith("Traceback (most recent call last):") and "in _fails_until" in traceback
        assert json.loads((failed / f"{key}.json").read_text())["error"] == outcome.failed[key]
    assert not RAY_NOISE.search("".join(capfd.readouterr())), "Ray printed a worker's traceback"


def test_a_failed_shard_is_one_line_naming_its_kept_traceback(small_ray, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("DMCONDENSE_FAULTS", "shard-00001=raise")
    run = tmp_path / "run"
    tiny = ["condense.iterations=4", "condense.checkpoint_every=2", "condense.ipc=1", "condense.batch_real=8",
            "condense.model=ConvNetW32", "plan.classes_per_shard=5", "resources.gpus_per_shard=0",
            "resources.max_retries=1", "evaluate.num_models=0", "evaluate.baselines=[]"]
    assert main(["run", CONFIG, "--out", str(run), *sets(*tiny)]) == 1
    out, err = capfd.readouterr()
    traceback = run / "failed" / "condense" / "shard-00001.traceback.txt"
    assert f"shard-00001 failed after 2 attempts: RuntimeError: injected fault in shard-00001; traceback in " \
           f"{traceback}" in out.splitlines()
    assert out.count("injected fault") == 1, out  # the summary names counts, not the error again
    assert "condense: 1 of 2 failed; everything else is committed" in out and f"dmcondense resume {run}" in out
    assert not RAY_NOISE.search(out + err), out + err
    assert "in _maybe_fault" in traceback.read_text()
    assert main(["resume", str(run)]) == 1  # the fault is still injected: the old record is replaced, not kept twice
    assert sorted(p.name for p in (run / "failed" / "condense").iterdir()) == [
        "shard-00001.json", "shard-00001.traceback.txt"]
