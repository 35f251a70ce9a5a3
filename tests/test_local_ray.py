"""The embedded Ray binds loopback only, even when the environment says nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO

PROBE = """
from orchestrator.local_ray import ray_session
import ray
with ray_session(None, num_cpus=1) as where:
    print(ray.get_runtime_context().gcs_address)
    print(sorted({n["NodeManagerAddress"] for n in ray.nodes()}))
"""


def test_local_ray_started_by_the_program_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=180, check=True).stdout.split("\n")
    assert out[0].startswith("127.0.0.1:"), out
    assert out[1] == "['127.0.0.1']", out
