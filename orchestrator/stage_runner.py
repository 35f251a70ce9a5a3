"""The one contract of a stage, and the one runner of every stage: of tasks (``UnitStage``) or
of actors (``ActorStage``).

A stage declares what it is (``UnitStage``: its name, the task body that computes and
commits one unit, what every task shares, what a unit needs of a node) and lists its units
(``Unit``: a key, the body's arguments, whether it is committed already, where its failure
is recorded). ``run_units`` does the rest, the same way for condense, baselines, the pool
and prepare: it skips what is committed, clears the old failure records of what it runs,
checks before any task starts that a node can host a unit (and that reserved GPUs are
usable there), runs the bodies through the one Ray helper (or one after the other in this
process), which records each failure as it happens (its error and, beside it, its traceback)
and gives it one console line, and raises ``StageFailed`` naming the units that still failed
while every other unit stays committed.

A stage that trains networks (evaluate, NAS) declares an ``ActorStage`` instead: the actor
class whose instances keep what they loaded across the units they take, how many actors the
cluster hosts (``Actors``) and what a task computes once for every call (the test split).
``run_units`` runs it the same way through the one Ray helper's actor pool, which replaces a
lost actor and gives its unit to another, with the same display and one line per failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from orchestrator import ray_work, storage
from orchestrator.components.worker_setup import check_gpus_usable
from orchestrator.config import ResourcesConfig
from orchestrator.progress import ProgressDisplay


class StageFailed(RuntimeError):
    """Some units of a stage failed after their retries; every other unit is committed and running
    the same command again computes only the rest (the CLI names that command)."""

    def __init__(self, stage: str, failed: dict[str, str], total: int) -> None:
        self.stage, self.failed = stage, failed
        self.summary = f"{stage}: {len(failed)} of {total} failed; everything else is committed"
        super().__init__("\n".join([self.summary, *(f"  {key}: {error}" for key, error in sorted(failed.items()))]))


@dataclass(frozen=True)
class Unit:
    key: str  # names it in progress and failure messages: shard-00017, net-00003, ...
    args: tuple
    weight: int = 1  # progress units it is worth (a shard's iterations)
    committed: bool = False
    failure: str | None = None  # where its failure is recorded (None: not recorded)


@dataclass(frozen=True)
class Needs:
    """What one unit reserves on a node (``resources.cpus_per_shard``, ``gpus_per_shard``, a
    memory estimate) and how its worker runs: the runner makes Ray's options of it, once per
    stage, and checks before any task starts that a node can host it."""

    what: str  # "a shard", "a pool network": named when no node fits
    resources: ResourcesConfig
    deterministic: bool  # precision.deterministic: the workers' environment for deterministic kernels
    memory: int | None = None  # bytes Ray reserves per unit (None: none)


@dataclass(frozen=True)
class UnitStage:
    name: str  # the stage: progress label, failure records, StageFailed
    unit: str  # what progress counts: "it", "shards", "steps", "tasks"
    noun: str  # what a unit is, in the "already committed" line: "shards", "networks"
    body: Callable[..., Any]  # body(*shared, *unit.args[, context]) computes and commits one unit
    shared: tuple = ()
    needs: Needs | None = None  # None: a task takes one CPU, on any node
    limit: int | None = None  # units in flight at most (None: as many as fit)
    with_context: bool = False  # the body takes a TaskContext to report progress with


@dataclass(frozen=True)
class Actors:
    """How many actors a stage keeps at once and what each reserves (``eval_pool.actor_pool``)."""

    count: int
    gpus: float  # each actor's share of a GPU (0: the CPU)
    resources: ResourcesConfig  # its restarts; reserved GPUs are checked usable where Ray places an actor
    deterministic: bool  # precision.deterministic: the actors' environment for deterministic kernels

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0


@dataclass(frozen=True)
class ActorStage:
    name: str  # the stage: progress label, StageFailed
    unit: str  # what progress counts: "networks", "trainings"
    actor: type  # actor(*init_args), kept across the units it computes
    init_args: tuple
    method: str  # actor.<method>(*unit.args[, shared]) computes one unit
    actors: Actors
    shared_task: tuple[Callable[..., Any], tuple] | None = None  # fn(*args), computed once by a task: its
    # result stays in the object store and goes with every call, last (each node maps one copy)


def run_units(stage: UnitStage | ActorStage, units: Sequence[Unit], console: Console, *,
              in_process: bool = False, done_units: int = 0) -> ray_work.Outcome:
    """Compute every unit not committed yet (module docstring); ``in_process`` runs the bodies
    here one after the other, without Ray. ``done_units``: progress finished before, beside the
    committed units' (networks scored by an earlier attempt)."""
    todo = [u for u in units if not u.committed]
    done = done_units + sum(u.weight for u in units if u.committed)
    if len(todo) < len(units):
        console.print(f"{stage.name}: {len(units) - len(todo)} of {len(units)} {stage.noun} already committed; "
                      f"{len(todo)} to compute", highlight=False)
    if not todo:
        return ray_work.Outcome()
    for u in todo:
        if u.failure is not None and storage.exists(u.failure):
            storage.remove(u.failure)
            storage.remove(ray_work.traceback_file(u.failure))
    work = [ray_work.Work(u.key, u.args, u.weight, u.failure) for u in todo]
    if isinstance(stage, ActorStage):
        outcome = _here(stage.name, stage.unit, *_actor_here(stage), work, console, done) if in_process else \
            _on_actors(stage, work, console, done)
    elif in_process:
        outcome = _here(stage.name, stage.unit, stage.body, stage.shared, work, console, done)
    else:
        options: dict[str, Any] = {"num_cpus": 1}
        if (needs := stage.needs) is not None:
            r = needs.resources
            ray_work.check_fits(r.cpus_per_shard, r.gpus_per_shard, needs.what)
            check_gpus_usable(r, r.gpus_per_shard, f"{stage.noun} (resources.gpus_per_shard)")
            options = ray_work.task_options(r, needs.deterministic, needs.memory)
        outcome = ray_work.run_tasks(stage.body, work, options=options, label=stage.name, unit=stage.unit,
                                     console=console, shared=stage.shared, limit=stage.limit,
                                     with_context=stage.with_context, done_units=done)
    if outcome.failed:  # each recorded, with its line on the console, as it failed
        raise StageFailed(stage.name, outcome.failed, len(units))
    return outcome


def _on_actors(stage: ActorStage, work: list[ray_work.Work], console: Console, done: int) -> ray_work.Outcome:
    """The units on the stage's actors; with GPUs, first checked usable where Ray places an actor."""
    a = stage.actors
    check_gpus_usable(a.resources, a.gpus, f"{stage.name} actors (evaluate.gpus)")
    if stage.shared_task is not None:
        fn, args = stage.shared_task
        shared = ray_work.compute_shared(fn, *args, options={"num_cpus": 1})
        work = [ray_work.Work(w.key, (*w.args, shared), w.units, w.failure) for w in work]
    return ray_work.run_on_actors(stage.actor, stage.init_args, stage.method, work, actors=a.count,
                                  options=ray_work.actor_options(a.resources, a.deterministic, a.gpus),
                                  label=stage.name, unit=stage.unit, console=console,
                                  done_units=done)


def _actor_here(stage: ActorStage) -> tuple[Callable[..., Any], tuple]:
    """One actor in this process, and what every call takes after its unit's arguments."""
    method = getattr(stage.actor(*stage.init_args), stage.method)
    if stage.shared_task is None:
        return method, ()
    fn, args = stage.shared_task
    shared = fn(*args)
    return (lambda *unit_args: method(*unit_args, shared)), ()


def _here(name: str, unit: str, body: Callable[..., Any], shared: tuple, work: list[ray_work.Work],
          console: Console, done: int) -> ray_work.Outcome:
    """The bodies one after the other in this process, with the same display and failure records."""
    outcome = ray_work.Outcome()
    total = done + sum(w.units for w in work)
    with ProgressDisplay(console, name, total, unit, done=done) as display:
        for w in work:
            started = time.monotonic()
            try:
                outcome.results[w.key] = body(*shared, *w.args)
            except Exception as err:  # noqa: BLE001 - recorded per unit, like a failed Ray task
                outcome.failures[w.key] = ray_work.TaskFailure.of(err)
                display.print(ray_work.report_failure(w, outcome.failures[w.key], attempts=1))
            done += w.units
            display.update(done, f"{len(outcome.results)}/{len(work)} done, {len(outcome.failed)} failed, "
                                 f"last {time.monotonic() - started:.0f} s")
    return outcome
