"""`deploy/submit_job.py` against a head started with `ray start`: the job commits every shard, the head stops clean.

The head is stopped by its own process group, not `ray stop`, which would kill
every Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.cli import main

from .conftest import REPO

pytestmark = [pytest.mark.ray, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

VENV_BIN = Path(sys.executable).parent
# 3 shards (4 + 4 + 2 classes) of a few iterations; no evaluation, no baselines.
SETS = ["condense.iterations=20", "condense.checkpoint_every=10", "condense.ipc=1", "condense.batch_real=8",
        "condense.model=ConvNetW32", "plan.classes_per_shard=4", "resources.gpus_per_shard=0",
        "evaluate.num_models=0", "evaluate.baselines=[]"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process that is not a zombie."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        if fields[0] != "Z":
            out[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return out


@dataclass
class Head:
    pgid: int
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    seen: set[int] = field(default_factory=set)  # every pid of the head seen so far

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def pids(self) -> set[int]:
        """The head's process group and all descendants (a job's driver runs in a session of its own)."""
        procs = _live_processes()
        found = {pid for pid, (_, pgid) in procs.items() if pgid == self.pgid}
        grew = True
        while grew:
            children = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
            found |= children
            grew = bool(children)
        self.seen |= found
        return found

    def stop(self, grace_s: float = 3.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + grace_s
            while self.pids() and time.time() < deadline:
                time.sleep(0.1)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def ray_head():
    """A loopback Ray head with the dashboard (Jobs API) on free ports, in a temp dir of its own."""
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "another test left Ray running in this process"
    gcs, dash, client, agent = _free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="dmc-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # the job's `python` is this venv's
    env.pop("RAY_ADDRESS", None)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent}", "--num-cpus=2", "--include-dashboard=true",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its daemons keep this new process group
    head = Head(pgid=proc.pid, temp_dir=temp_dir, gcs_port=gcs, dashboard_port=dash)
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]
        yield head
    finally:
        head.stop()


def test_job_commits_every_shard_and_the_head_stops_clean(ray_head, tmp_path, capsys):
    run = tmp_path / "job-run"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # the Jobs SDK sends ~/.ray/auth_token only with this
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, str(REPO / "deploy" / "submit_job.py"), "configs/digits.yaml", "--out", str(run),
           "--address", ray_head.dashboard, *[arg for s in SETS for arg in ("--set", s)]]
    job = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = job.stdout + job.stderr
    assert job.returncode == 0, log[-3000:]
    assert "SUCCEEDED, exit status 0" in log
    assert f"running on Ray cluster at 127.0.0.1:{ray_head.gcs_port}" in log  # joined this head, not a new Ray

    capsys.readouterr()
    assert main(["status", str(run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [s["state"] for s in status["shards"]] == ["committed"] * 3
    assert sorted(c for s in status["shards"] for c in s["classes"]) == list(range(10))

    assert ray_head.pids(), "the head's processes should be running before the stop"
    ray_head.stop()
    alive = _live_processes()
    assert not [pid for pid in ray_head.seen if pid in alive], "processes of the head outlived its stop"
    for port in (ray_head.gcs_port, ray_head.dashboard_port):  # nothing listens there any more
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections may linger in TIME_WAIT
            s.bind(("127.0.0.1", port))
            s.listen()
