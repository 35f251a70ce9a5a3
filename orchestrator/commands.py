"""The ``dmcondense`` commands the program advises, built in this one place.

Every message that tells the user what to run next (an error's fix, the "Finish with" line
after failed units) takes its command from here, so that the advice and the command line
(``orchestrator.cli``) cannot drift apart; a test runs the advised commands.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from orchestrator.secrets import shown_assignments

PROGRAM = "dmcondense"


def job(name: str, source: str, sets: Sequence[str] = ()) -> str:
    """``dmcondense NAME SOURCE --set k=v ...``: a command that reads a config (or a run); a
    worker environment value is written as the shell variable of its name, never in clear."""
    words = [word for s in sets for word in shown_assignments(s)]
    return " ".join([shlex.join([PROGRAM, name, source]), *(f"--set {word}" for word in words)])


def shown_command_line(argv: Sequence[str]) -> str:
    """A command line as it may be shown or stored: worker environment values hidden, whichever
    form of ``--set`` (``--set K=V``, ``--set=K=V``, a mapping) gave them."""
    return " ".join([PROGRAM, *(_shown_word(a) for a in argv)])


def _shown_word(word: str) -> str:
    flag, eq, rest = word.partition("=")
    if eq and flag.startswith("--") and "=" in rest:  # --set=KEY=VALUE
        return f"{flag}=" + f" {flag}=".join(shown_assignments(rest))
    return " --set ".join(shown_assignments(word)) if "=" in word else shlex.quote(word)


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
