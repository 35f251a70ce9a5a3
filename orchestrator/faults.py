"""Fault injection for the failure tests, set through the driver's environment.

DMCONDENSE_FAULTS="shard-00001=kill-after-checkpoint,eval-random=raise" names a
fault per target: a shard (``shard-NNNNN``), the evaluation jobs of one method
(``eval-<method>``) or a pool network (``net-NNNNN``). "-once" faults fire on the first attempt only, marked in
RUN/faults/ so that a retry (in another process) runs clean.
"""

from __future__ import annotations

import os
import signal

from orchestrator import storage
from orchestrator.commits import Folder

FAULTS_ENV = "DMCONDENSE_FAULTS"


def fault_for(target: str) -> str | None:
    """The fault injected into ``target`` in this process's environment, if any."""
    spec = os.environ.get(FAULTS_ENV, "")
    return dict(item.split("=", 1) for item in spec.split(",") if "=" in item).get(target)


def first_time(folder: Folder, target: str, fault: str) -> bool:
    """True the first time a run (or a pool) reaches this fault (and marks it reached)."""
    marker = folder.path("faults", f"{target}.{fault}")
    if storage.exists(marker):
        return False
    storage.write_bytes_atomic(marker, b"1")
    return True


def kill_this_process() -> None:
    """Die as a lost node or an OOM kill would: no exception, no cleanup."""
    os.kill(os.getpid(), signal.SIGKILL)


def worker_env() -> dict[str, str]:
    """The fault spec to pass on to Ray workers' runtime_env ({} when none is set)."""
    faults = os.environ.get(FAULTS_ENV)
    return {FAULTS_ENV: faults} if faults else {}
