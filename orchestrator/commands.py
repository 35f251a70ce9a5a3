"""The ``dmcondense`` commands the program advises, built in this one place.

Every message that tells the user what to run next (an error's fix, the "Finish with" line
after failed units) takes its command from here, so that the advice and the command line
(``orchestrator.cli``) cannot drift apart; a test runs the advised commands.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

PROGRAM = "dmcondense"


def job(name: str, source: str, sets: Sequence[str] = ()) -> str:
    """``dmcondense NAME SOURCE --set k=v ...``: a command that reads a config (or a run)."""
    return shlex.join([PROGRAM, name, source, *(arg for s in sets for arg in ("--set", s))])


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
