"""The progress display in logs: a line every few seconds, the last state once."""

from __future__ import annotations

import io

from rich.console import Console

from orchestrator.progress import ProgressDisplay


def test_a_log_gets_each_state_once_and_the_final_line_always():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with ProgressDisplay(console, "condense", 10, "it", log_every_s=0.0) as display:
        display.update(4, "1/2 done")
        display.update(4, "1/2 done")  # nothing new: no second line
        display.update(10, "2/2 done")
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["condense: 4/10 it", "condense: 10/10 it"]
    out.truncate(0)
    with ProgressDisplay(console, "evaluate", 3, "networks", log_every_s=3600) as display:
        display.update(3, "done")  # throttled while running, printed when the display closes
    assert out.getvalue().count("evaluate: 3/3 networks") == 1
