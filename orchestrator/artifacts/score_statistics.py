"""The statistics of scored networks: mean +- std per (method, model), and the means of
DD-Ranking's fair scores over the rounds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable

from orchestrator.artifacts.scores import Score


@dataclass(frozen=True)
class Summary:
    method: str
    model: str
    n: int
    mean: float  # percent
    std: float
    ior: float | None = None  # the fair scores' means over the rounds, in percent (None: not for every round)
    hlr: float | None = None
    lrs: float | None = None
    ars: float | None = None


FAIR_SCORES = ("ior", "hlr", "lrs", "ars")


def summarize(scores: Iterable[Score]) -> list[Summary]:
    """mean +- std (percent, population std) per (method, model), in the order methods first appear."""
    groups: dict[tuple[str, str], list[Score]] = {}
    for s in scores:
        groups.setdefault((s.method, s.model), []).append(s)
    return [Summary(method, model, len(group), statistics.fmean(100.0 * s.accuracy for s in group),
                    statistics.pstdev([100.0 * s.accuracy for s in group]),
                    *(_mean_of(group, name) for name in FAIR_SCORES))
            for (method, model), group in groups.items()]


def _mean_of(group: list[Score], name: str) -> float | None:
    values = [getattr(s, name, None) for s in group]  # continual's step scores carry none
    return 100.0 * statistics.fmean(values) if values and None not in values else None
