"""Shared fixtures: Ray stays on loopback, one small local instance per module that asks for it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
# The read-only real datasets live in shared/ beside the checkout (CI clones next to it too).
SHARED_DATA = next(
    (p for p in (REPO.parent / "shared" / "data", Path("/work/shared/data")) if p.is_dir()),
    REPO.parent / "shared" / "data",
)


_EXIT_STATUS: list[int] = []


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
