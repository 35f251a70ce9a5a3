"""Shared fixtures: Ray stays on loopback, one small local instance per module that asks for it."""

from __future__ import annotations

import ast
import contextlib
import inspect
import logging
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from orchestrator.run_dir import RunDir
    from workers.dm import DMCondenser

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
# The read-only real datasets live in shared/ beside the checkout (CI clones next to it too).
SHARED_DATA = next(
    (p for p in (REPO.parent / "shared" / "data", Path("/work/shared/data")) if p.is_dir()),
    REPO.parent / "shared" / "data",
)


_EXIT_STATUS: list[int] = []

# ---------------------------------------------------------------- test tiers, by rule
# A test is in the slow tier (marker "ray") when it, a fixture it uses or a helper of its module
# it calls starts Ray or a subprocess: these patterns are how the suite does either. The fast
# tier (-m "not ray") gives each test FAST_TIMEOUT_S and fails any test that starts Ray anyway.
_SLOW = re.compile(
    r"\bray\.init\(|\bray_session\(|start_local_ray\(|\bCluster\(|\bsubprocess\.|\bPopen\("
    r"|\b(cpu_ray|local_ray|ray_cluster)\b"
    r"|\bmain\(\s*\[?\s*[\"'](run|resume|evaluate|pool|continual|nas|prepare)[\"']"
    r"|\b(run_cli|cli)\(\s*[\"'](run|resume|evaluate|pool|continual|nas|prepare)[\"']"
)
FAST_TIMEOUT_S = 60


def _source(obj: object) -> str:
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return ""


def _called_helpers(source: str, module: object, depth: int = 2) -> str:
    """The sources of the module's own functions that ``source`` calls, followed ``depth`` levels."""
    if depth == 0 or not source:
        return ""
    try:
        names = {n.func.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    except SyntaxError:
        return ""
    helpers = [getattr(module, n) for n in names if inspect.isfunction(getattr(module, n, None))
               and getattr(module, n).__module__ == getattr(module, "__name__", None)]
    return "".join(_source(h) + _called_helpers(_source(h), module, depth - 1) for h in helpers)


def starts_ray_or_a_process(item: pytest.Item) -> bool:
    fn = getattr(item, "function", None)
    module = getattr(item, "module", None)
    text = _source(fn) + _called_helpers(_source(fn), module)
    for name in getattr(item, "fixturenames", ()):
        defs = item._fixtureinfo.name2fixturedefs.get(name, ()) if hasattr(item, "_fixtureinfo") else ()
        text += "".join(_source(d.func) for d in defs) + f" {name} "
    return bool(_SLOW.search(text))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("ray") is None and starts_ray_or_a_process(item):
            item.add_marker(pytest.mark.ray)
        if item.get_closest_marker("ray") is None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(FAST_TIMEOUT_S))


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_ray(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast-tier test that starts Ray fails at once, naming the rule (what it missed)."""
    if request.node.get_closest_marker("ray") is not None:
        return
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail(f"{request.node.nodeid} starts Ray but the tier rule (tests/conftest.py, _SLOW) did not see it: "
                    "start it through a fixture or helper the rule knows", pytrace=False)

    monkeypatch.setattr(ray, "init", refuse)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without interpreter finalisation once pytest has reported everything.

    The suite starts and stops Ray many times in one process; Ray's native
    worker threads can then crash while Python finalises (seen once in CI as a
    segfault after "306 passed"; ray-project/ray#31145 is the same class).
    Results and the exit status are already final here, so skip that stage.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(_EXIT_STATUS[-1] if _EXIT_STATUS else 0)


def start_local_ray(num_cpus: int, num_gpus: int = 0) -> None:
    import ray

    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1",
             include_dashboard=False, log_to_driver=False)


class ReportedProgress:
    """A shard task's context (orchestrator.ray_work.TaskContext) outside Ray: it keeps the
    units the task said its checkpoint held."""

    node_id = "here"

    def __init__(self) -> None:
        self.resumed_at: list[int] = []

    def __call__(self, done: int, final: bool = False) -> None:
        pass

    def resumed(self, done: int) -> None:
        self.resumed_at.append(done)


def digits_run(output: Path, overrides: list[str]) -> RunDir:
    """A saved run of configs/digits.yaml with ``overrides``, in ``output``."""
    # The project is imported by the tests that call these, not by every module's collection.
    from orchestrator.config import load_config
    from orchestrator.pipeline import new_run

    run = new_run(load_config(REPO / "configs" / "digits.yaml", [*overrides, f"output={output}"]))
    run.save()
    return run


def checkpoint_first_shard(run: RunDir, until: int, identity: dict) -> DMCondenser:
    """Shard 0 condensed to iteration ``until`` and checkpointed as its task does, stamped with
    ``identity`` (the stream that made it); the condenser is returned to compare against."""
    from orchestrator.artifacts import shards
    from orchestrator.components.settings import dm_settings
    from orchestrator.components.worker_setup import run_reader
    from workers.dm import DMCondenser

    spec = run.shards[0]
    condenser = DMCondenser(run_reader(run).read_train(list(spec.class_ids)), run.dataset, spec.class_ids,
                            dm_settings(run.config), spec.seed)
    condenser.run(until=until)
    shards.write_checkpoint(run, spec, {**condenser.state_dict(), **identity})
    return condenser


def sets(*items: str) -> list[str]:
    """``--set`` arguments of the command line for each ``key=value``."""
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def cpu_ray():
    """A 3-CPU local Ray without GPUs."""
    import ray

    start_local_ray(num_cpus=3)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_ray():
    """A 3-CPU local Ray with 2 fake GPUs (work still runs on the CPU)."""
    import ray

    start_local_ray(num_cpus=3, num_gpus=2)
    yield ray
    ray.shutdown()


AWS_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[str]:
    """An S3-compatible moto server on 127.0.0.1 with one bucket; yields "host:port".

    AWS_* test credentials are in os.environ meanwhile (set before a Ray started
    inside, so its workers inherit them) and restored afterwards.
    """
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    saved = {k: os.environ.get(k) for k in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket=bucket)
        yield f"{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
