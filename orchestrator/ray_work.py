"""The one helper that runs any stage's Ray work: submit, stream, retry, one progress display.

What Ray gives is used as it is: a task whose worker dies is run again (``max_retries``),
as is one that raised when ``retry_exceptions`` is on; an actor that dies is restarted and
its call run again (``max_restarts``, ``max_task_retries``). What Ray lacks is here:
results streamed as they finish (``ray.wait``), a cap on work in flight, jobs dispatched
to idle actors, failures collected per unit while the others go on, and one progress
display, fed by the tasks through a board actor.

Stage modules call this and never Ray itself.
"""

from __future__ import annotations

import time
import contextlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from rich.console import Console

from orchestrator import faults, worker_env
from orchestrator.config import RunConfig
from orchestrator.progress import ProgressDisplay
from orchestrator.run_dir import RunError
from workers.devices import DETERMINISTIC_ENV


@dataclass(frozen=True)
class Work:
    """One unit of a stage: a shard, a job of networks, a class range."""

    key: str  # names the unit in progress and failure messages
    args: tuple
    units: int = 1  # progress units it is worth (a shard's iterations, a job's networks)


@dataclass
class Outcome:
    results: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # key -> the error, one line


@ray.remote(num_cpus=0)
class _Board:
    """Units done so far by each running task, fed by the tasks, read by the driver's display."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}

    def update(self, key: str, done: int) -> None:
        self.done[key] = done

    def snapshot(self) -> dict[str, int]:
        return self.done


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

    @property
    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


# ------------------------------------------------------------------ options
def task_options(cfg: RunConfig) -> dict[str, Any]:
    """Ray options of a shard-sized task: its resources, Ray's retries, one per node first."""
    resources = cfg.resources
    options: dict[str, Any] = {
        "num_cpus": resources.cpus_per_shard,
        "num_gpus": resources.gpus_per_shard,
        "max_retries": resources.max_retries,
        "retry_exceptions": resources.retry_exceptions,
        "scheduling_strategy": "SPREAD",  # every node's GPUs get work
    }
    return _with_env(options, cfg)


def actor_options(cfg: RunConfig, gpus: float) -> dict[str, Any]:
    """Ray options of a pool actor: a CPU, a share of a GPU, restarts on death (its call runs again)."""
    retries = cfg.resources.max_retries
    options: dict[str, Any] = {"num_cpus": 1, "max_restarts": retries, "max_task_retries": retries}
    if gpus > 0:
        options["num_gpus"] = gpus
    return _with_env(options, cfg)


def _with_env(options: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    # failure tests inject faults into the workers through the driver's environment
    extra = {**faults.worker_env(), **(DETERMINISTIC_ENV if cfg.precision.deterministic else {})}
    runtime_env = worker_env.runtime_env(cfg.resources, **extra)
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
    units done so far. ``done_units``: units finished before this call (resumed work)."""
    if not work:
        return Outcome()
    remote = ray.remote(fn).options(**options)
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
                       cancel=_cancel)
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


def call(fn: Callable[..., Any], *args: Any, options: dict[str, Any]) -> Any:
    """``fn(*args)`` as one task placed with ``options``, waited for: a probe of what a unit of
    work will find where Ray places it."""
    try:
        return ray.get(ray.remote(fn).options(**options).remote(*args))
    except RayError as exc:
        raise RunError(short_error(exc)) from None


def compute_shared(fn: Callable[..., Any], *args: Any, options: dict[str, Any]) -> Any:
    """``fn(*args)`` as one task whose result stays in the object store: a reference to hand
    to many actors (each node keeps one copy), the driver never holding the bytes."""
    ref = ray.remote(fn).options(**options).remote(*args)
    try:
        ray.get(_probe.remote(ref))  # raises the task's error without fetching its value here
    except RayError as exc:
        raise RunError(short_error(exc)) from None
    return ref


@ray.remote(num_cpus=0)
def _probe(value: Any) -> None:
    """Needs ``value``: fails with its producer's error, returns nothing."""


def _stream(work: Sequence[Work], submit: Callable[[Work], Any], release: Callable[[Any, bool], None],
            room: Callable[[int], bool], board: Any, display: ProgressDisplay,
            cancel: Callable[[Any], None] = lambda ref: None,
            rerun: Callable[[Work, RayError], bool] = lambda w, exc: False) -> Outcome:
    """Submit units while ``room(units in flight)`` and collect them as they finish (a unit that
    failed in a way ``rerun`` accepts goes back to the queue); whatever stops the loop (an
    interrupt, a guard) cancels the units in flight on its way out."""
    if len({w.key for w in work}) != len(work):
        raise ValueError(f"work keys must be unique: {[w.key for w in work]}")
    queue = deque(work)
    running: dict[Any, Work] = {}
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
                    try:
                        outcome.results[w.key] = ray.get(ref)
                        release(ref, False)
                    except RayError as exc:  # a unit's failure is recorded, the others go on
                        release(ref, isinstance(exc, RayActorError))
                        if rerun(w, exc):
                            queue.appendleft(w)
                            display.print(f"[yellow]{w.key}: its actor was lost ({short_error(exc)[:80]}); running "
                                          "it again on another[/]")
                            continue
                        outcome.failed[w.key] = short_error(exc)
                        display.print(f"[red]{w.key} failed:[/] {outcome.failed[w.key]}")
                    finished_units += w.units
                partial = _progress_of(board)
                in_flight = sum(min(partial.get(w.key, 0), w.units) for w in running.values())
                display.update(finished_units + in_flight, f"{len(outcome.results)}/{len(work)} done, "
                                                           f"{len(running)} in flight, {len(outcome.failed)} failed")
    except BaseException:
        for ref in running:
            cancel(ref)
        raise
    return outcome


def _progress_of(board: Any) -> dict[str, int]:
    """Units done by the running tasks; none known while the board is unreachable (display only)."""
    if board is None:
        return {}
    try:
        return ray.get(board.snapshot.remote(), timeout=10)
    except (RayError, TimeoutError):
        return {}


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
