"""Stages of actors (evaluate, NAS) run under the one stage contract: ``run_units`` with an
``ActorStage`` keeps an actor's state across its units, hands every call the shared value a
task computed once, replaces an actor that is lost and runs its unit again, and gives a unit
that raised one console line and a ``StageFailed``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.config import ResourcesConfig
from orchestrator.stage_runner import Actors, ActorStage, StageFailed, Unit, run_units

from .conftest import start_local_ray


class Counter:
    """Adds the shared value to each unit's number; counts the units this actor took. A unit
    named in ``die_once`` (a marker file not there yet) kills the actor's process once."""

    def __init__(self, die_once: str | None = None) -> None:
        self.taken, self.die_once = 0, die_once

    def add(self, number: int, shared: int) -> tuple[int, int]:
        if number < 0:
            raise ValueError(f"no negative units: {number}")
        if self.die_once is not None and number == 2 and not Path(self.die_once).exists():
            Path(self.die_once).write_text("died")
            os._exit(1)
        self.taken += 1
        return number + shared, self.taken


def shared_value(base: int) -> int:
    return base * 100


def _stage(actors: int, die_once: str | None = None, retries: int = 1) -> ActorStage:
    return ActorStage("evaluate", "networks", Counter, (die_once,), "add",
                      Actors(actors, 0.0, ResourcesConfig(gpus_per_shard=0, max_retries=retries), deterministic=False),
                      shared_task=(shared_value, (5,)))


def test_an_actor_stage_runs_in_process_with_one_actor_and_the_shared_value():
    console = Console(record=True, width=200)
    outcome = run_units(_stage(1), [Unit(f"u{i}", (i,)) for i in range(3)], console, in_process=True)
    assert outcome.results == {"u0": (500, 1), "u1": (501, 2), "u2": (502, 3)}  # one actor kept its count
    with pytest.raises(StageFailed) as failed:
        run_units(_stage(1), [Unit("good", (1,)), Unit("bad", (-1,))], console, in_process=True)
    assert failed.value.failed == {"bad": "ValueError: no negative units: -1"}
    assert "bad failed" in console.export_text()


def test_a_failed_evaluation_job_keeps_its_error_and_traceback_under_failed(tmp_path):
    from orchestrator.run_dir import RunDir

    record = RunDir.__new__(RunDir)
    object.__setattr__(record, "uri", str(tmp_path))
    where = RunDir.job_failure(record, "evaluate", "dm@500 / ConvNet, networks 1-4")
    assert where == str(tmp_path / "failed" / "evaluate" / "dm@500-ConvNet-networks-1-4.json")
    console = Console(record=True, width=300)
    with pytest.raises(StageFailed):
        run_units(_stage(1), [Unit("bad", (-1,), failure=where)], console, in_process=True)
    assert "ValueError: no negative units: -1" in Path(where).read_text()
    assert "Traceback" in (tmp_path / "failed" / "evaluate" / "dm@500-ConvNet-networks-1-4.traceback.txt").read_text()
    assert "traceback in" in console.export_text()


@pytest.fixture(scope="module")
def small_ray():
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def test_a_lost_actor_is_replaced_and_its_unit_run_again(small_ray, tmp_path):
    console = Console(record=True, width=200)
    marker = str(tmp_path / "died")
    outcome = run_units(_stage(2, die_once=marker), [Unit(f"u{i}", (i,)) for i in range(4)], console,
                        done_units=3)
    assert Path(marker).exists()  # the actor of u2 died once
    assert {k: v[0] for k, v in outcome.results.items()} == {"u0": 500, "u1": 501, "u2": 502, "u3": 503}
    assert "7/7 networks" in console.export_text()  # earlier progress counted with this call's


def test_a_unit_that_raises_on_an_actor_fails_alone_with_one_line(small_ray):
    console = Console(record=True, width=200)
    with pytest.raises(StageFailed) as failed:
        run_units(_stage(2), [Unit("good", (1,)), Unit("bad", (-1,))], console)
    assert list(failed.value.failed) == ["bad"] and "no negative units" in failed.value.failed["bad"]
    lines = [ln for ln in console.export_text().splitlines() if "bad failed" in ln]
    assert len(lines) == 1, console.export_text()
