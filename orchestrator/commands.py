"""The ``dmcondense`` commands the program advises, built in this one place.

Every message that tells the user what to run next (an error's fix, the "Finish with" line
after failed units) takes its command from here, so that the advice and the command line
(``orchestrator.cli``) cannot drift apart; a test runs the advised commands.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

PROGRAM = "dmcondense"


SECRET_KEYS = "resources.worker_env."  # their values are never printed: see orchestrator.secrets


def job(name: str, source: str, sets: Sequence[str] = ()) -> str:
    """``dmcondense NAME SOURCE --set k=v ...``: a command that reads a config (or a run); a
    worker environment value is written as the shell variable of its name, never in clear."""
    return " ".join([shlex.join([PROGRAM, name, source]), *(f"--set {_shown(s)}" for s in sets)])


def shown_command_line(argv: Sequence[str]) -> str:
    """A command line as it may be shown or stored: worker environment values hidden."""
    return " ".join(_shown(a) if a.startswith(SECRET_KEYS) else shlex.quote(a) for a in [PROGRAM, *argv])


def _shown(assignment: str) -> str:
    key, _, value = assignment.partition("=")
    if key.startswith(SECRET_KEYS):
        return f'{shlex.quote(key)}="${key[len(SECRET_KEYS):]}"'
    return shlex.quote(assignment)


def resume(run_uri: str) -> str:
    return job("resume", run_uri)


def evaluate(run_uri: str, sets: Sequence[str] = ()) -> str:
    return job("evaluate", run_uri, sets)


def nas(run_uri: str, sets: Sequence[str] = ()) -> str:
    return job("nas", run_uri, sets)


def pool(source: str, sets: Sequence[str] = ()) -> str:
    return job("pool", source, sets)


def prepare(source: str, root: str | None, out: str) -> str:
    return shlex.join([PROGRAM, "prepare", source, *(["--root", root] if root else []), "--out", out])


def new_run(out: str) -> str:
    return shlex.join([PROGRAM, "run", "CONFIG", "--out", out])
