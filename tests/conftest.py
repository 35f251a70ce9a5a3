"""Shared fixtures: Ray stays on loopback, one small local instance per module that asks for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def start_local_ray(num_cpus: int, num_gpus: int = 0) -> None:
    import ray

    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1",
             include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="module")
def local_ray():
    """A 3-CPU local Ray with 2 fake GPUs (work still runs on the CPU)."""
    import ray

    start_local_ray(num_cpus=3, num_gpus=2)
    yield ray
    ray.shutdown()
