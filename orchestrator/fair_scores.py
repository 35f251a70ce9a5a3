"""DD-Ranking's fair scores of a condensed set, from test accuracies alone.

Definitions of DD-Ranking v0.2.0 as its README and ``doc/introduction.md`` state them at
commit b8b09664 (github.com/NUS-HPC-AI-Lab/DD-Ranking, 2025-06-14; the paper is
arXiv:2505.13300). Accuracies are fractions in [0, 1], every one of them from the same
model architecture and test split; "random" is a random subset of the real training set
with as many images per class as the synthetic set, trained under the same protocol:

    HLR = acc(real, hard) - acc(syn, hard)          hard-label recovery: lower is better
    IOR = acc(syn, any) - acc(random, any)          improvement over random: higher is better
    alpha = w * IOR - (1 - w) * HLR                 w in [0, 1], 0.5 by default
    LRS = (e^alpha - e^-1) / (e - e^-1)             label-robust score

``any`` is the method's own protocol (hard or soft labels, its augmentation), the same for the
synthetic and the random set. Since HLR and IOR lie in [-1, 1], so does alpha, and LRS lies in
[0, 1] (DD-Ranking reports it times 100, in percent). Equal accuracies everywhere give
alpha = 0 and LRS = 1 / (1 + e).

    beta = g * (acc(syn, aug) - acc(random, aug)) + (1 - g) * (acc(syn, no aug) - acc(random, no aug))
    ARS = (e^beta - e^-1) / (e - e^-1)              augmentation-robust score, g = 0.5 by default

DD-Ranking scores each evaluation round (one seed for all the accuracies of the round) and
reports the mean and the population standard deviation of the rounds' scores;
``label_robust_summary`` and ``augmentation_robust_summary`` do the same.

Where the package's code at that commit differs from its stated definition, we follow the
definition: the code feeds accuracies in percent to ``exp`` (its accuracies are x100), so
its LRS and ARS leave [0, 1] as soon as alpha is more than one point from 0.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, fields
from typing import Sequence

DEFAULT_WEIGHT = 0.5  # w of LRS and g of ARS, as on DD-Ranking's leaderboard


@dataclass(frozen=True)
class LabelAccuracies:
    """One round's accuracies for the label-robust score, fractions in [0, 1]."""

    real_hard: float  # the whole real training set, hard labels
    syn_hard: float  # the synthetic set, hard labels
    syn_any: float  # the synthetic set under the method's protocol (hard or soft labels)
    random_any: float  # a random real subset of the same size under that protocol

    def __post_init__(self) -> None:
        _check_fractions(self)


@dataclass(frozen=True)
class AugmentationAccuracies:
    """One round's accuracies for the augmentation-robust score, fractions in [0, 1]."""

    syn_aug: float  # the synthetic set, trained with the method's augmentation
    random_aug: float  # a random real subset of the same size, with that augmentation
    syn_plain: float  # the synthetic set, trained without augmentation
    random_plain: float  # the random subset, without augmentation

    def __post_init__(self) -> None:
        _check_fractions(self)


@dataclass(frozen=True)
class LabelRobustScore:
    hlr: float  # fractions of accuracy in [-1, 1]
    ior: float
    lrs: float  # in [0, 1]


@dataclass(frozen=True)
class AugmentationRobustScore:
    with_aug: float  # acc(syn, aug) - acc(random, aug), in [-1, 1]
    without_aug: float  # acc(syn, no aug) - acc(random, no aug), in [-1, 1]
    ars: float  # in [0, 1]


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # population standard deviation (numpy's default, as DD-Ranking reports it)


@dataclass(frozen=True)
class LabelRobustSummary:
    rounds: int
    hlr: Spread
    ior: Spread
    lrs: Spread


@dataclass(frozen=True)
class AugmentationRobustSummary:
    rounds: int
    with_aug: Spread
    without_aug: Spread
    ars: Spread


def rescaled(x: float) -> float:
    """``(e^x - e^-1) / (e - e^-1)``: [-1, 1] onto [0, 1], increasing."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def label_robust_score(acc: LabelAccuracies, weight: float = DEFAULT_WEIGHT) -> LabelRobustScore:
    """HLR, IOR and LRS of one round; ``weight`` is w, the share of IOR."""
    _check_weight(weight)
    hlr = acc.real_hard - acc.syn_hard
    ior = acc.syn_any - acc.random_any
    return LabelRobustScore(hlr, ior, rescaled(weight * ior - (1 - weight) * hlr))


def augmentation_robust_score(acc: AugmentationAccuracies, weight: float = DEFAULT_WEIGHT) -> AugmentationRobustScore:
    """The two improvements over random and ARS of one round; ``weight`` is g, the share of the
    improvement with augmentation."""
    _check_weight(weight)
    with_aug = acc.syn_aug - acc.random_aug
    without_aug = acc.syn_plain - acc.random_plain
    return AugmentationRobustScore(with_aug, without_aug, rescaled(weight * with_aug + (1 - weight) * without_aug))


@dataclass(frozen=True)
class RoundAccuracies:
    """What is known of one network's round under one protocol (fractions; None: not scored)."""

    syn: float  # this set
    random: float | None  # the random set's network of the same seed
    syn_hard: float | None  # this set's network under hard labels
    real_hard: float | None  # the real training set under hard labels
    augmented: bool  # whether this protocol augments
    syn_other: float | None  # this set's network under the other augmentation
    random_other: float | None  # the random set's, under the other augmentation


@dataclass(frozen=True)
class RoundScores:
    """DD-Ranking's scores of one round (None: an accuracy it needs is not known)."""

    ior: float | None
    hlr: float | None
    lrs: float | None
    ars: float | None


def round_scores(acc: RoundAccuracies, weight: float = DEFAULT_WEIGHT) -> RoundScores:
    """IOR and HLR where their accuracies are known, LRS where both are, ARS where the round is
    also scored with the other augmentation."""
    ior = acc.syn - acc.random if acc.random is not None else None
    hlr = acc.real_hard - acc.syn_hard if acc.real_hard is not None and acc.syn_hard is not None else None
    lrs = None
    if ior is not None and hlr is not None:
        lrs = label_robust_score(LabelAccuracies(acc.real_hard, acc.syn_hard, acc.syn, acc.random), weight).lrs  # type: ignore[arg-type]
    ars = None
    if acc.random is not None and acc.syn_other is not None and acc.random_other is not None:
        mine, theirs = (acc.syn, acc.random), (acc.syn_other, acc.random_other)
        (syn_aug, rnd_aug), (syn_plain, rnd_plain) = (mine, theirs) if acc.augmented else (theirs, mine)
        ars = augmentation_robust_score(AugmentationAccuracies(syn_aug, rnd_aug, syn_plain, rnd_plain), weight).ars
    return RoundScores(ior, hlr, lrs, ars)


def label_robust_summary(rounds: Sequence[LabelAccuracies], weight: float = DEFAULT_WEIGHT) -> LabelRobustSummary:
    """Each round scored on its own, then averaged (not the score of averaged accuracies)."""
    scores = [label_robust_score(r, weight) for r in _some(rounds)]
    return LabelRobustSummary(len(scores), spread([s.hlr for s in scores]), spread([s.ior for s in scores]),
                              spread([s.lrs for s in scores]))


def augmentation_robust_summary(rounds: Sequence[AugmentationAccuracies],
                                weight: float = DEFAULT_WEIGHT) -> AugmentationRobustSummary:
    scores = [augmentation_robust_score(r, weight) for r in _some(rounds)]
    return AugmentationRobustSummary(len(scores), spread([s.with_aug for s in scores]),
                                     spread([s.without_aug for s in scores]), spread([s.ars for s in scores]))


def spread(values: Sequence[float]) -> Spread:
    return Spread(statistics.fmean(values), statistics.pstdev(values))


def _some(rounds: Sequence) -> Sequence:
    if len(rounds) == 0:
        raise ValueError("no evaluation rounds to score: give the accuracies of at least one round")
    return rounds


def _check_fractions(record: LabelAccuracies | AugmentationAccuracies) -> None:
    for f in fields(record):
        value = getattr(record, f.name)
        if not 0.0 <= value <= 1.0:  # NaN fails too
            hint = " (a percent? divide by 100)" if 1.0 < value <= 100.0 else ""
            raise ValueError(f"{type(record).__name__}.{f.name} must be an accuracy in [0, 1], got {value}{hint}")


def _check_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the weight of a fair score must be in [0, 1], got {weight}")
