"""The ``dmcondense`` commands the program advises, built in this one place.

Every message that tells the user what to run next (an error's fix, the "Finish with" line
after failed units) takes its command from here, so that the advice and the command line
(``orchestrator.cli``) cannot drift apart; a test runs the advised commands.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

import yaml

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


def resume(run_uri: str, sets: Sequence[str] = ()) -> str:
    return job("resume", run_uri, sets)


def recompute_changed(run_uri: str, sets: Sequence[str] = ()) -> str:
    """``resume`` that condenses again the shards of the classes whose images changed."""
    return f"{resume(run_uri, sets)} --recompute-changed"


def continual(source: str, out: str) -> str:
    return shlex.join([PROGRAM, "continual", source, "--out", out])


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


def setting(key: str, value: Any) -> str:
    """A ``--set`` item giving ``key`` this value, written as YAML reads it back."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip().removesuffix("...").strip()
    return f"{key}={text}"


# The commands whose directory is their run, the one argument they take besides options: no --out.
_IN_THEIR_RUN = ("resume", "evaluate", "nas")
_WITH_VALUE = ("--set", "--config", "--address")  # their options that take a value


def unwritable_fix(command_line: str) -> str:
    """What to do when a command (as ``shown_command_line`` wrote it) cannot write its directory:
    a command that takes --out chooses another location; one that works in its run directory runs
    again on a writable copy of it, every other word kept as shown."""
    words = shlex.split(command_line, posix=False)  # each word kept as quoted
    if len(words) < 3 or words[1] not in _IN_THEIR_RUN:
        return "choose a writable location with --out"
    i = 2
    while i < len(words) and words[i].startswith("-"):
        i += 2 if words[i] in _WITH_VALUE else 1
    again = " ".join([*words[:i], "COPY", *words[i + 1:]])
    return (f"make it writable, or copy the run directory to a writable location COPY and run `{again}` (a copied "
            "run goes on from where it stopped)")
