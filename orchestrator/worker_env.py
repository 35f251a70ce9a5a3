"""The environment of the worker processes (shard tasks, evaluation actors): the allocator
settings that ``resources.reuse_memory`` turns on and the user's ``resources.worker_env``."""

from __future__ import annotations

from typing import Any

from orchestrator.config import ResourcesConfig
from orchestrator.secrets import check_restored

# glibc serves blocks above 32 MiB with fresh mmap pages and returns them on free, so a
# training step whose activations exceed that pays a page fault per 4 KiB on every step
# (a quarter to a third of an evaluation step on the CPU). Keeping freed memory in the
# heap lets the next step reuse it: benchmarks/bench_worker_env.py measures the gain.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
    "MALLOC_TOP_PAD_": str(1 << 26),
}


def allocator_environ(environ: dict[str, str], reuse_memory: bool) -> dict[str, str]:
    """``environ`` with the ALLOCATOR_ENV settings set (reuse_memory) or removed (glibc's defaults)."""
    env = {k: v for k, v in environ.items() if k not in ALLOCATOR_ENV}
    return {**env, **ALLOCATOR_ENV} if reuse_memory else env


def runtime_env(resources: ResourcesConfig, **extra: str) -> dict[str, Any]:
    """The Ray runtime_env of the worker processes: the allocator settings, ``worker_env``, ``extra``."""
    check_restored(resources.worker_env)
    env = {**(ALLOCATOR_ENV if resources.reuse_memory else {}), **resources.worker_env, **extra}
    return {"env_vars": env} if env else {}
