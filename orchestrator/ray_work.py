"""The one helper that runs any stage's Ray work: submit, stream, retry, one progress display.

What Ray gives is used as it is: a task whose worker dies is run again (``max_retries``);
an actor that dies is restarted and its call run again (``max_restarts``,
``max_task_retries``). What Ray lacks is here: results streamed as they finish
(``ray.wait``), a cap on work in flight, jobs dispatched to idle actors, failures collected
per unit while the others go on, and one progress display, fed by the tasks through a board
actor. A task's exception is caught where it ran and returned (``TaskFailure``): this helper,
not Ray, runs it again (``retry_exceptions``, within ``max_retries``) unless a retry cannot
change it (a missing file, a permission), so that Ray prints no worker traceback on the
console; a unit that still failed gets one line there, naming where its traceback is kept.

Stage modules call this and never Ray itself.
"""

from __future__ import annotations

import contextlib
import re
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from rich.console import Console
from rich.markup import escape

from orchestrator import commits, faults, storage, worker_env
from orchestrator.config import ResourcesConfig
from orchestrator.progress import ProgressDisplay
from orchestrator.errors import RunError
from workers.data import uri as locations
from workers.devices import DETERMINISTIC_ENV


@dataclass(frozen=True)
class Work:
    """One unit of a stage: a shard, a job of networks, a class range."""

    key: str  # names the unit in progress and failure messages
    args: tuple
    units: int = 1  # progress units it is worth (a shard's iterations, a job's networks)
    failure: str | None = None  # where its failure is recorded, its traceback beside it (None: nowhere)


# Errors a retry cannot change (the ones orchestrator.storage does not retry either).
LASTING_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colours of Ray's error texts


@dataclass(frozen=True)
class TaskFailure:
    """Why a unit failed: its error's last line, its whole traceback, and whether a retry could
    change it. A task body's exception comes back as this, its result, caught where it ran."""

    error: str
    traceback: str
    lasting: bool = False

    @classmethod
    def of(cls, exc: BaseException) -> TaskFailure:
        return cls(short_error(exc), "".join(traceback.format_exception(exc)), isinstance(exc, LASTING_ERRORS))

    @classmethod
    def of_ray(cls, exc: BaseException) -> TaskFailure:
        """A worker or an actor lost, or an actor call that raised: what Ray says, less its colours."""
        return cls(short_error(exc), _ANSI.sub("", str(exc)))


@dataclass
class Outcome:
    results: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, TaskFailure] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        """key -> the error, one line."""
        return {key: f.error for key, f in self.failures.items()}


def traceback_file(record: str) -> str:
    """Where the traceback of the failure recorded at ``record`` is kept, as text."""
    return locations.replace_suffix(record, ".json", ".traceback.txt")


def report_failure(w: Work, failure: TaskFailure, attempts: int) -> str:
    """Record the failure of ``w`` (when it has a place for it) and give its one console line."""
    where = ""
    if w.failure is not None:
        try:
            storage.write_bytes_atomic(traceback_file(w.failure), failure.traceback.encode())
            commits.record_failure(w.failure, failure.error)
            where = f"; traceback in {traceback_file(w.failure)}"
        except OSError as exc:  # the run directory itself may be what failed
            where = f"; its record could not be written ({short_error(exc)})"
    why = " (not retried: a retry cannot change it)" if failure.lasting and attempts == 1 else (
        f" after {attempts} attempts" if attempts > 1 else "")
    return f"[red]{w.key} failed{why}:[/] {escape(failure.error + where)}"


@ray.remote(num_cpus=0)
class _Board:
    """Units done so far by each running task, and the units each found done when it resumed
    from a checkpoint; fed by the tasks, read by the driver's display."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}
        self.resumed: dict[str, int] = {}

    def update(self, key: str, done: int) -> None:
        self.done[key] = done

    def resume(self, key: str, done: int) -> None:
        self.done[key] = self.resumed[key] = done

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        return self.done, self.resumed


class TaskContext:
    """What a task learns of where it runs, and calls with its units done so far (sent to the
    driver's display at most once a second)."""

    def __init__(self, board: Any, key: str, every_s: float = 1.0) -> None:
        self.board, self.key, self.every_s, self._last = board, key, every_s, 0.0

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._last >= self.every_s:
            self._last = now
            self.board.update.remote(self.key, int(done))

    def resumed(self, done: int) -> None:
        """The units its checkpoint held: done before this call, so no part of its pace (ETA)."""
        self.board.resume.remote(self.key, int(done))

    @property
    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


# ------------------------------------------------------------------ options
def task_options(resources: ResourcesConfig, deterministic: bool, memory: int | None = None) -> dict[str, Any]:
    """Ray options of a shard-sized task: its resources, Ray's retries, one per node first;
    ``memory``: the bytes Ray reserves for it (None: Ray's default, none)."""
    options: dict[str, Any] = {
        "num_cpus": resources.cpus_per_shard,
        "num_gpus": resources.gpus_per_shard,
        "max_retries": resources.max_retries,
        "retry_exceptions": resources.retry_exceptions,
        "scheduling_strategy": "SPREAD",  # every node's GPUs get work
    }
    if memory is not None:
        options["memory"] = memory
    return _with_env(options, resources, deterministic)


def actor_options(resources: ResourcesConfig, deterministic: bool, gpus: float) -> dict[str, Any]:
    """Ray options of a pool actor: a CPU, a share of a GPU, restarts on death (its call runs again)."""
    retries = resources.max_retries
    options: dict[str, Any] = {"num_cpus": 1, "max_restarts": retries, "max_task_retries": retries}
    if gpus > 0:
        options["num_gpus"] = gpus
    return _with_env(options, resources, deterministic)


def _with_env(options: dict[str, Any], resources: ResourcesConfig, deterministic: bool) -> dict[str, Any]:
    # failure tests inject faults into the workers through the driver's environment
    extra = {**faults.worker_env(), **(DETERMINISTIC_ENV if deterministic else {})}
    runtime_env = worker_env.runtime_env(resources, **extra)
    return {**options, "runtime_env": runtime_env} if runtime_env else options


def cluster_resources() -> dict[str, float]:
    """What the live nodes offer (a node just lost may still be counted by ray.cluster_resources)."""
    total: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for key, value in node["Resources"].items():
                total[key] = total.get(key, 0.0) + value
    return total


def check_fits(cpus: float, gpus: float, what: str) -> None:
    """Fail at once (no hang) when no node can ever host one unit of work."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    if gpus > 0 and sum(n.get("GPU", 0) for n in nodes) == 0:
        raise RunError(
            f"resources.gpus_per_shard={gpus:g} but the Ray cluster has no GPUs; "
            "run on the CPU with --set resources.gpus_per_shard=0, or pass --address of a GPU cluster"
        )
    biggest = max(((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes), default=(0, 0))
    raise RunError(
        f"no node can host {what} needing {cpus:g} CPU and {gpus:g} GPU "
        f"(largest node: {biggest[0]:g} CPU, {biggest[1]:g} GPU); lower resources.cpus_per_shard / gpus_per_shard"
    )


# ------------------------------------------------------------------ running
_GUARDS: list[Callable[[], object]] = []


@contextlib.contextmanager
def guarded(check: Callable[[], object]) -> Iterator[None]:
    """Call ``check`` between the units of every stage run meanwhile; what it raises stops the
    stage (its work in flight cancelled), as an interrupt does."""
    _GUARDS.append(check)
    try:
        yield
    finally:
        _GUARDS.remove(check)



def run_tasks(fn: Callable[..., Any], work: Sequence[Work], *, options: dict[str, Any], label: str, unit: str,
              console: Console, shared: tuple = (), limit: int | None = None, with_context: bool = False,
              done_units: int = 0) -> Outcome:
    """``fn(*shared, *work.args[, context])`` as one Ray task per unit, at most ``limit`` in flight.

    ``shared`` values go to the object store once, not once per task. With
    ``with_context`` the task gets a last argument, a ``TaskContext`` to call with its
    units done so far. ``done_units``: units finished before this call (resumed work).
    ``options``' ``retry_exceptions`` is this helper's to apply (module docstring)."""
    if not work:
        return Outcome()
    retries = options.get("max_retries", 0) if options.get("retry_exceptions") else 0
    remote = ray.remote(_caught(fn)).options(**{k: v for k, v in options.items() if k != "retry_exceptions"})
    refs = [ray.put(value) for value in shared]
    # on the driver's node, which lives as long as the driver does; restarted (empty) if need be
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    board = _Board.options(scheduling_strategy=here, max_restarts=-1).remote() if with_context else None

    def submit(w: Work) -> Any:
        context = (TaskContext(board, w.key),) if board is not None else ()
        return remote.remote(*refs, *w.args, *context)

    try:
        return _stream(work, submit, lambda ref, died: None, lambda running: running < (limit or len(work)), board,
                       ProgressDisplay(console, label, done_units + sum(w.units for w in work), unit, done=done_units),
                       cancel=_cancel, retries=retries)
    finally:
        if board is not None:
            ray.kill(board)


def run_on_actors(cls: type, init_args: tuple, method: str, work: Sequence[Work], *, actors: int,
                  options: dict[str, Any], label: str, unit: str, console: Console,
                  done_units: int = 0) -> Outcome:
    """``cls(*init_args).<method>(*work.args)`` on a pool of up to ``actors`` actors, one call per
    actor at a time. Ray restarts an actor that dies and runs its call again (``options``); an
    actor still unavailable after that (its node gone) is replaced by a fresh one and its call
    given to the next free actor, up to ``max_restarts`` times per call, then counted as failed."""
    if not work:
        return Outcome()
    spawn = ray.remote(**options)(cls)
    starting = {a.__ray_ready__.remote(): a for a in (spawn.remote(*init_args) for _ in range(min(actors, len(work))))}
    idle: list[Any] = []  # only actors that have started take calls: one Ray cannot place never holds one
    busy: dict[Any, Any] = {}
    lost: dict[str, int] = {}

    def has_idle(running: int) -> bool:
        if starting:
            ready, _ = ray.wait(list(starting), num_returns=len(starting), timeout=0)
            for ref in ready:
                actor = starting.pop(ref)
                try:
                    ray.get(ref)
                    idle.append(actor)
                except RayError:  # it could not start (its node went): the others take its share
                    _kill(actor)
        return bool(idle)

    def rerun(w: Work, exc: RayError) -> bool:
        lost[w.key] = lost.get(w.key, 0) + 1
        return isinstance(exc, RayActorError) and lost[w.key] <= options.get("max_restarts", 0)

    def submit(w: Work) -> Any:
        actor = idle.pop()
        ref = getattr(actor, method).remote(*w.args)
        busy[ref] = actor
        return ref

    def release(ref: Any, died: bool) -> None:
        actor = busy.pop(ref)
        if died:  # its node may be gone: the others take its calls; a fresh one only if none is left
            _kill(actor)
            if idle or busy or starting:
                return
            fresh = spawn.remote(*init_args)
            starting[fresh.__ray_ready__.remote()] = fresh
            return
        idle.append(actor)

    try:
        return _stream(work, submit, release, has_idle, None,
                       ProgressDisplay(console, label, done_units + sum(w.units for w in work), unit, done=done_units),
                       rerun=rerun)
    finally:
        for actor in [*idle, *busy.values(), *starting.values()]:
            _kill(actor)


def _caught(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` returning what it raises as a ``TaskFailure``, under ``fn``'s name (Ray's task name)."""
    def attempt(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - a unit's failure is its result; the driver decides
            return TaskFailure.of(exc)

    attempt.__name__ = attempt.__qualname__ = fn.__name__
    return attempt


def call(fn: Callable[..., Any], *args: Any, options: dict[str, Any]) -> Any:
    """``fn(*args)`` as one task placed with ``options``, waited for: a probe of what a unit of
    work will find where Ray places it."""
    try:
        return _waited(ray.remote(fn).options(**options).remote(*args))
    except RayError as exc:
        raise RunError(short_error(exc)) from None


def compute_shared(fn: Callable[..., Any], *args: Any, options: dict[str, Any]) -> Any:
    """``fn(*args)`` as one task whose result stays in the object store: a reference to hand
    to many actors (each node keeps one copy), the driver never holding the bytes."""
    ref = ray.remote(fn).options(**options).remote(*args)
    try:
        _waited(_probe.remote(ref))  # raises the task's error without fetching its value here
    except RayError as exc:
        raise RunError(short_error(exc)) from None
    return ref


@ray.remote(num_cpus=0)
def _probe(value: Any) -> None:
    """Needs ``value``: fails with its producer's error, returns nothing."""


def _waited(ref: Any) -> Any:
    """``ray.get(ref)``, calling the guards meanwhile: an interrupt does not wait for a slow probe
    (a GPU node the autoscaler is still adding); what they raise cancels the task."""
    try:
        while not ray.wait([ref], timeout=0.5)[0]:
            for check in _GUARDS:
                check()
    except BaseException:
        _cancel(ref)
        raise
    return ray.get(ref)


def _stream(work: Sequence[Work], submit: Callable[[Work], Any], release: Callable[[Any, bool], None],
            room: Callable[[int], bool], board: Any, display: ProgressDisplay,
            cancel: Callable[[Any], None] = lambda ref: None,
            rerun: Callable[[Work, RayError], bool] = lambda w, exc: False, retries: int = 0) -> Outcome:
    """Submit units while ``room(units in flight)`` and collect them as they finish (a unit that
    failed in a way ``rerun`` accepts goes back to the queue, as does one whose task returned a
    failure a retry may change, ``retries`` times); whatever stops the loop (an interrupt, a
    guard) cancels the units in flight on its way out."""
    if len({w.key for w in work}) != len(work):
        raise ValueError(f"work keys must be unique: {[w.key for w in work]}")
    queue = deque(work)
    running: dict[Any, Work] = {}
    attempts: dict[str, int] = {}
    outcome = Outcome()
    finished_units = display.completed
    try:
        with display:
            while queue or running:
                for check in _GUARDS:
                    check()
                while queue and room(len(running)):
                    w = queue.popleft()
                    running[submit(w)] = w
                if not running:  # nothing in flight yet: the actors are still starting
                    time.sleep(0.1)
                    continue
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    w = running.pop(ref)
                    attempts[w.key] = attempts.get(w.key, 0) + 1
                    try:
                        result = ray.get(ref)
                        release(ref, False)
                    except RayError as exc:  # Ray's own retries spent (a lost worker), or an actor's call raised
                        release(ref, isinstance(exc, RayActorError))
                        if rerun(w, exc):
                            queue.appendleft(w)
                            display.print(f"[yellow]{w.key}: its actor was lost ({escape(short_error(exc)[:80])}); "
                                          "running it again on another[/]")
                            continue
                        result = TaskFailure.of_ray(exc)
                    else:
                        if isinstance(result, TaskFailure) and not result.lasting and attempts[w.key] <= retries:
                            queue.appendleft(w)  # its body raised: run it again (retry_exceptions)
                            continue
                    if isinstance(result, TaskFailure):  # a unit's failure is recorded, the others go on
                        outcome.failures[w.key] = result
                        display.print(report_failure(w, result, attempts[w.key]))
                    else:
                        outcome.results[w.key] = result
                    finished_units += w.units
                partial, resumed = _progress_of(board)
                in_flight = sum(min(partial.get(w.key, 0), w.units) for w in running.values())
                display.update(finished_units + in_flight, f"{len(outcome.results)}/{len(work)} done, "
                                                           f"{len(running)} in flight, {len(outcome.failed)} failed",
                               resumed=sum(resumed.values()))
    except BaseException:
        for ref in running:
            cancel(ref)
        raise
    return outcome


def _progress_of(board: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Units done by the running tasks, and those their checkpoints held; none known while the
    board is unreachable (display only)."""
    if board is None:
        return {}, {}
    try:
        return ray.get(board.snapshot.remote(), timeout=10)
    except (RayError, TimeoutError):
        return {}, {}


def short_error(exc: BaseException) -> str:
    """The task's own error, one line: Ray's wrapper and traceback left out."""
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}".strip()
    return text.splitlines()[-1][:300] if text else type(cause).__name__


def _cancel(ref: Any) -> None:
    try:
        ray.cancel(ref, force=True)  # the worker process ends: its unit resumes from its last checkpoint
    except Exception:  # noqa: BLE001 - already finished is fine
        pass


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor)
    except Exception:  # noqa: BLE001 - already gone is fine
        pass
