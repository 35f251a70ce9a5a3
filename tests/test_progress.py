"""The progress display in logs: a line every few seconds, the last state once, and an ETA
from the units gained while it runs."""

from __future__ import annotations

import functools
import io
import re
import sys
import time

import pytest
from rich.console import Console

from orchestrator import progress
from orchestrator.progress import ProgressDisplay

from .conftest import start_local_ray


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


def test_the_eta_is_the_pace_of_the_units_gained_not_of_those_a_checkpoint_held(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    display = ProgressDisplay(Console(file=io.StringIO()), "condense", 400, "it", done=0)
    clock[0] = 35.0
    display.update(101, "0/1 done", resumed=100)  # a shard resumed at 100, one iteration since
    assert display.eta_s() == pytest.approx(35.0 * 299)
    display.update(400, "1/1 done", resumed=100)
    assert display.eta_s() is None


def _resumed_task(before: int, context) -> int:  # noqa: ANN001 - ray_work.TaskContext
    context.resumed(before)
    context(before + 1, final=True)
    time.sleep(3)  # the driver's display polls meanwhile
    return before + 1


def test_a_task_resumed_from_its_checkpoint_does_not_make_its_stage_look_fast(monkeypatch):
    import ray

    from orchestrator import ray_work

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(ray_work, "ProgressDisplay", functools.partial(ProgressDisplay, log_every_s=0.0))
    out = io.StringIO()
    start_local_ray(num_cpus=1)
    try:
        ray_work.run_tasks(_resumed_task, [ray_work.Work("shard-00000", (90,), units=100)], options={"num_cpus": 1},
                           label="condense", unit="it", console=Console(file=out, width=300), with_context=True)
    finally:
        ray.shutdown()
    seen = [tuple(map(int, m)) for m in re.findall(r"91/100 it, .* (\d+) s elapsed, ETA (\d+) s", out.getvalue())]
    assert seen, out.getvalue()
    elapsed, eta = seen[-1]  # 1 unit gained in `elapsed`: 9 left take 9 times as long
    assert abs(eta - 9 * elapsed) <= 9 * 0.5 + 1, out.getvalue()
