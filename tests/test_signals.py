"""SIGINT and SIGTERM over a command's whole life: at once in its first seconds (imports), while
it holds its lease and starts Ray, and again and again while it stops: one line, exit 130 or 143,
no traceback, no lease or Ray process left behind. The program runs as `dmcondense` does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import stopping
from orchestrator.commands import shown_command_line

from .conftest import REPO, sets

CONFIG = str(REPO / "configs" / "digits.yaml")
TINY = ["condense.iterations=400", "condense.checkpoint_every=20", "condense.ipc=1", "condense.batch_real=8",
        "condense.model=ConvNetW32", "plan.classes_per_shard=5", "resources.gpus_per_shard=0",
        "resources.max_concurrent_shards=1", "evaluate.num_models=0", "evaluate.baselines=[]"]
SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]


def _start(run: Path) -> subprocess.Popen:
    """`dmcondense run` (its entry point, orchestrator/__main__.py) in a process group of its own."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "run", CONFIG, "--out", str(run), *sets(*TINY)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _until(proc: subprocess.Popen, ready, what: str, timeout_s: float = 240) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.01)


def _catches_sigterm(pid: int) -> bool:
    """The program's handler is in place: Python itself leaves SIGTERM to the kernel."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _live_in_group(pgid: int) -> list[str]:
    """The command lines of the group's processes that still run (zombies aside)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return alive


def _ended(proc: subprocess.Popen, run: Path) -> tuple[int, str]:
    """The exit status and output of a stopped command, once its lease and its Ray are gone."""
    out, _ = proc.communicate(timeout=180)
    deadline = time.monotonic() + 30
    while _live_in_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _live_in_group(proc.pid), f"left running: {_live_in_group(proc.pid)}"
    assert not (run / "lease.json").exists(), out
    assert "Traceback" not in out and "Error" not in out, out
    return proc.returncode, out.strip()


pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


@pytest.mark.parametrize("sig, code", SIGNALS)
def test_a_signal_while_the_program_imports_stops_it_in_one_line(sig, code, tmp_path):
    run = tmp_path / "run"
    proc = _start(run)
    _until(proc, lambda: _catches_sigterm(proc.pid), "signal handler")  # torch and Ray are still importing
    proc.send_signal(sig)
    status, out = _ended(proc, run)
    assert status == code
    assert out.startswith(f"stopped by {signal.Signals(sig).name} before any work started; run ") and "\n" not in out
    assert not run.exists()


@pytest.mark.parametrize("sig, code", SIGNALS)
def test_a_signal_while_the_lease_is_held_and_ray_starts_releases_both(sig, code, tmp_path):
    run = tmp_path / "run"
    proc = _start(run)
    _until(proc, (run / "lease.json").exists, "lease")  # claimed; Ray starts next
    proc.send_signal(sig)
    status, out = _ended(proc, run)
    assert status == code
    command = shown_command_line(["run", CONFIG, "--out", str(run), *sets(*TINY)])
    assert out == f"stopped by {signal.Signals(sig).name} before any work started; run again with: {command}"


def test_ctrl_c_again_and_again_while_the_driver_stops_still_ends_in_its_one_line(tmp_path):
    run = tmp_path / "run"
    proc = _start(run)
    _until(proc, (run / "run.json").exists, "run record")  # the work has started
    time.sleep(1)
    while proc.poll() is None:  # through the cancellation, Ray's shutdown and the interpreter's exit
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches the whole foreground group
        time.sleep(0.2)
    status, out = _ended(proc, run)
    assert status == 130
    last = out.splitlines()[-1]
    assert last.startswith("stopped by SIGINT: the work in flight was cancelled and everything committed is kept; "
                           "shards: ") and last.endswith(f"finish with: dmcondense resume {run}"), out
    assert sum("stopped by" in line for line in out.splitlines()) == 1


# ------------------------------------------------------------------ the Stop itself, without processes
def test_a_stop_raises_at_once_until_deferred_and_only_its_first_signal_counts():
    stop = stopping.Stop()
    with pytest.raises(stopping.Interrupted) as first:
        stop.record(signal.SIGTERM, None)
    assert first.value.exit_code == 143
    stop.record(signal.SIGINT, None)  # a second signal: the stop under way goes on
    with pytest.raises(stopping.Interrupted) as checked:
        stop.check()
    assert checked.value.name == "SIGTERM"

    deferred = stopping.Stop()
    deferred.defer()
    deferred.check()
    deferred.record(signal.SIGINT, None)  # recorded, not raised: Ray's native code may be running
    with pytest.raises(stopping.Interrupted) as later:
        deferred.check()
    assert later.value.exit_code == 130
    assert deferred.interrupted(SystemError("returned a result with an exception set")).name == "SIGINT"
    assert stopping.Stop().interrupted(SystemError("no signal")) is None


def test_nested_commands_share_one_stop_and_the_outer_one_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with stopping.handled() as outer:
        assert signal.getsignal(signal.SIGTERM) == outer.record
        with stopping.handled() as inner:
            assert inner is outer
        assert signal.getsignal(signal.SIGINT) == outer.record
    assert signal.getsignal(signal.SIGTERM) == before
