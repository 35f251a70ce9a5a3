"""The evaluation actors' job loop: one job per actor at a time, lost actors replaced."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError, RayTaskError
from rich.console import Console


class EvaluationError(RuntimeError):
    """The evaluation stage stopped; the networks it scored are kept for the next attempt."""


def run_jobs(jobs: list[dict[str, Any]], spawn: Callable[[], Any], n_actors: int, retries: int,
             on_rows: Callable[[list[dict[str, Any]]], None], console: Console) -> None:
    """Run ``jobs`` on up to ``n_actors`` actors made by ``spawn``, one job per actor at a time.

    A job whose actor dies goes to a fresh actor, up to ``retries`` times; an exception
    raised by the job itself is not retried (bad input or a bug does not heal)."""
    queue = deque((job, 0) for job in jobs)
    idle = [spawn() for _ in range(min(n_actors, len(jobs)))]
    running: dict[Any, tuple[Any, dict[str, Any], int]] = {}
    try:
        while queue or running:
            while queue and idle:
                job, attempt = queue.popleft()
                actor = idle.pop()
                running[actor.score.remote(job)] = (actor, job, attempt)
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, job, attempt = running.pop(ref)
            what = f"{job['method']} / {job['model']}, {len(job['seeds'])} network(s)"
            try:
                rows = ray.get(ref)
            except RayActorError as exc:
                _kill(actor)
                if attempt >= retries:
                    raise EvaluationError(f"{what}: its actor was lost {attempt + 1} times "
                                          f"(resources.max_retries={retries}): {exc}") from exc
                console.print(f"[yellow]evaluate: lost the actor of {what}; retry {attempt + 1} of {retries} "
                              "on a fresh actor[/]", highlight=False)
                idle.append(spawn())
                queue.append((job, attempt + 1))
                continue
            except RayTaskError as exc:
                raise EvaluationError(f"{what}: {exc.cause if exc.cause is not None else exc}") from exc
            idle.append(actor)
            on_rows(rows)
    finally:
        for actor in idle + [a for a, _, _ in running.values()]:
            _kill(actor)


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor)
    except Exception:  # noqa: BLE001 - already gone is fine
        pass
