"""Secrets out of the run directory: the values of ``resources.worker_env`` (where users put cloud
credentials) are written as fingerprints, never in clear.

RUN/run.json (and every copy of the config a run writes) holds ``redacted:sha256:<16 hex>`` for
each value. Reopening a run takes the value back from the driver's environment variable of the
same name when its fingerprint matches; a value that cannot be restored stops any command that
would start workers, naming the variable to export (or to pass with ``--set``).

A command line is shown (in messages, in the advice to run a command, in the lease a driver holds)
with every value it gives the worker environment written as the shell variable of its name,
whichever form of ``--set`` gave it: ``resources.worker_env.K=v``, ``resources.worker_env={K: v}``
or ``resources={worker_env: {K: v}}``.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Mapping

import yaml

from orchestrator.config import ConfigError

PREFIX = "redacted:sha256:"
WORKER_ENV = "resources.worker_env"
HIDDEN = "<not shown: it may set resources.worker_env>"


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


def shown_assignments(assignment: str) -> list[str]:
    """A ``--set KEY=VALUE`` as shell words that may be shown or stored: each worker environment
    value it sets becomes ``resources.worker_env.K="$K"`` (a mapping gives one per key, its other
    keys their own assignments); any other assignment is quoted as it is."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not _may_set_worker_env(key, raw):
        return [shlex.quote(assignment)]
    if key.startswith(WORKER_ENV + "."):
        return [_from_shell(key)]
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):  # not a mapping this program would take: shown without its value
        return [shlex.quote(f"{key}={HIDDEN}")]
    if not value:
        return [shlex.quote(f"{key}={{}}")]
    return [word for k, v in value.items() for word in shown_assignments(f"{key}.{k}={_yaml_value(v)}")]


def shown_item(assignment: str) -> str:
    """One ``--set`` item as a message may quote it (config errors): a worker environment value hidden."""
    return " --set ".join(shown_assignments(assignment))


def _may_set_worker_env(key: str, raw: str) -> bool:
    return key.startswith(WORKER_ENV + ".") or key == WORKER_ENV or (key == "resources" and "worker_env" in raw)


def _from_shell(key: str) -> str:
    """``resources.worker_env.K="$K"``: the value read from the shell of whoever runs the command."""
    return f'{shlex.quote(key)}="${key[len(WORKER_ENV) + 1:]}"'


def _yaml_value(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip().removesuffix("...").strip()
