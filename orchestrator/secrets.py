"""Secrets out of the run directory: the values of ``resources.worker_env`` (where users put cloud
credentials) are written as fingerprints, never in clear.

RUN/run.json (and every copy of the config a run writes) holds ``redacted:sha256:<16 hex>`` for
each value. Reopening a run takes the value back from the driver's environment variable of the
same name when its fingerprint matches; a value that cannot be restored stops any command that
would start workers, naming the variable to export (or to pass with ``--set``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from orchestrator.config import ConfigError

PREFIX = "redacted:sha256:"


def fingerprint(value: str) -> str:
    return PREFIX + hashlib.sha256(value.encode()).hexdigest()[:16]


def redact(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v if v.startswith(PREFIX) else fingerprint(v) for k, v in env.items()}


def restore(env: Mapping[str, str], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``env`` with each fingerprint replaced by the same-named variable of ``environ`` when it matches."""
    out = {}
    for k, v in env.items():
        here = environ.get(k)
        out[k] = here if v.startswith(PREFIX) and here is not None and fingerprint(here) == v else v
    return out


def check_restored(env: Mapping[str, str]) -> None:
    """Before any worker starts: every value is a real one."""
    missing = sorted(k for k, v in env.items() if v.startswith(PREFIX))
    if missing:
        raise ConfigError(f"resources.worker_env.{missing[0]} is not stored in the run directory (only its fingerprint "
                       f"is); export {missing[0]} with its value in this shell, or pass --set "
                       f"resources.worker_env.{missing[0]}=VALUE" + (f" (also: {', '.join(missing[1:])})"
                                                                      if len(missing) > 1 else ""))


def redacted_config(data: dict) -> dict:
    """A config dump (``RunConfig.model_dump``) with ``resources.worker_env`` redacted."""
    resources = data.get("resources") or {}
    if not resources.get("worker_env"):
        return data
    return {**data, "resources": {**resources, "worker_env": redact(resources["worker_env"])}}
