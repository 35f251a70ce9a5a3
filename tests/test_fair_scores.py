"""DD-Ranking's fair scores against values worked out by hand (e = 2.718282, e^-1 = 0.367879,
e - e^-1 = 2.350402)."""

from __future__ import annotations

import math

import pytest

from orchestrator.fair_scores import (
    AugmentationAccuracies,
    LabelAccuracies,
    augmentation_robust_score,
    augmentation_robust_summary,
    label_robust_score,
    label_robust_summary,
    rescaled,
)


def test_label_robust_score_by_hand():
    """HLR = 0.80 - 0.50 = 0.30, IOR = 0.60 - 0.40 = 0.20, alpha = 0.5 * 0.20 - 0.5 * 0.30 = -0.05,
    LRS = (e^-0.05 - e^-1) / (e - e^-1) = (0.951229 - 0.367879) / 2.350402 = 0.248192."""
    score = label_robust_score(LabelAccuracies(real_hard=0.80, syn_hard=0.50, syn_any=0.60, random_any=0.40))
    assert score.hlr == pytest.approx(0.30)
    assert score.ior == pytest.approx(0.20)
    assert score.lrs == pytest.approx(0.248192, abs=1e-6)


def test_the_weight_moves_the_blend_toward_ior():
    """w = 0.8: alpha = 0.8 * 0.20 - 0.2 * 0.30 = 0.10, LRS = (1.105171 - 0.367879) / 2.350402 = 0.313687;
    w = 1: IOR alone, alpha = 0.20, LRS = (1.221403 - 0.367879) / 2.350402 = 0.363139;
    w = 0: -HLR alone, alpha = -0.30, LRS = (0.740818 - 0.367879) / 2.350402 = 0.158670."""
    acc = LabelAccuracies(real_hard=0.80, syn_hard=0.50, syn_any=0.60, random_any=0.40)
    assert label_robust_score(acc, weight=0.8).lrs == pytest.approx(0.313687, abs=1e-6)
    assert label_robust_score(acc, weight=1.0).lrs == pytest.approx(0.363139, abs=1e-6)
    assert label_robust_score(acc, weight=0.0).lrs == pytest.approx(0.158670, abs=1e-6)


def test_equal_accuracies_score_one_over_one_plus_e():
    """HLR = IOR = 0, alpha = 0: LRS = (1 - e^-1) / (e - e^-1) = 1 / (1 + e) = 0.268941."""
    score = label_robust_score(LabelAccuracies(0.55, 0.55, 0.55, 0.55))
    assert (score.hlr, score.ior) == (0.0, 0.0)
    assert score.lrs == pytest.approx(1 / (1 + math.e)) == pytest.approx(0.268941, abs=1e-6)


def test_synthetic_below_random_gives_a_negative_ior():
    """IOR = 0.30 - 0.45 = -0.15, HLR = 0.30, alpha = -0.075 - 0.15 = -0.225,
    LRS = (0.798516 - 0.367879) / 2.350402 = 0.183218: below the equal-accuracies 0.268941."""
    score = label_robust_score(LabelAccuracies(real_hard=0.80, syn_hard=0.50, syn_any=0.30, random_any=0.45))
    assert score.ior == pytest.approx(-0.15)
    assert score.lrs == pytest.approx(0.183218, abs=1e-6)


def test_synthetic_above_real_gives_a_negative_hlr():
    score = label_robust_score(LabelAccuracies(real_hard=0.60, syn_hard=0.65, syn_any=0.65, random_any=0.60))
    assert score.hlr == pytest.approx(-0.05)
    assert score.lrs == pytest.approx(rescaled(0.05))


def test_the_extremes_map_to_zero_and_one():
    worst = label_robust_score(LabelAccuracies(real_hard=1.0, syn_hard=0.0, syn_any=0.0, random_any=1.0))
    best = label_robust_score(LabelAccuracies(real_hard=0.0, syn_hard=1.0, syn_any=1.0, random_any=0.0))
    assert (worst.hlr, worst.ior, worst.lrs) == (1.0, -1.0, pytest.approx(0.0, abs=1e-12))
    assert (best.hlr, best.ior, best.lrs) == (-1.0, 1.0, pytest.approx(1.0))


def test_augmentation_robust_score_by_hand():
    """with aug 0.70 - 0.60 = 0.10, without 0.50 - 0.45 = 0.05; g = 0.5: beta = 0.075,
    ARS = (1.077884 - 0.367879) / 2.350402 = 0.302078; g = 0.25: beta = 0.0625,
    ARS = (1.064494 - 0.367879) / 2.350402 = 0.296381."""
    acc = AugmentationAccuracies(syn_aug=0.70, random_aug=0.60, syn_plain=0.50, random_plain=0.45)
    score = augmentation_robust_score(acc)
    assert (score.with_aug, score.without_aug) == (pytest.approx(0.10), pytest.approx(0.05))
    assert score.ars == pytest.approx(0.302078, abs=1e-6)
    assert augmentation_robust_score(acc, weight=0.25).ars == pytest.approx(0.296381, abs=1e-6)


def test_augmentation_that_helps_random_more_lowers_ars():
    """with aug 0.40 - 0.50 = -0.10, without 0.45 - 0.35 = 0.10: beta = 0, ARS = 1 / (1 + e)."""
    score = augmentation_robust_score(AugmentationAccuracies(0.40, 0.50, 0.45, 0.35))
    assert score.ars == pytest.approx(0.268941, abs=1e-6)


def test_rounds_are_scored_then_averaged():
    """Round 1: LRS 0.248192 (as above); round 2: equal accuracies, 0.268941. Mean 0.258566, population
    std |0.268941 - 0.248192| / 2 = 0.010375; HLR 0.30 and 0, mean 0.15, std 0.15."""
    rounds = [LabelAccuracies(0.80, 0.50, 0.60, 0.40), LabelAccuracies(0.55, 0.55, 0.55, 0.55)]
    summary = label_robust_summary(rounds)
    assert summary.rounds == 2
    assert summary.lrs.mean == pytest.approx(0.258566, abs=1e-6)
    assert summary.lrs.std == pytest.approx(0.010375, abs=1e-6)
    assert (summary.hlr.mean, summary.hlr.std) == (pytest.approx(0.15), pytest.approx(0.15))
    assert (summary.ior.mean, summary.ior.std) == (pytest.approx(0.10), pytest.approx(0.10))

    aug = augmentation_robust_summary([AugmentationAccuracies(0.70, 0.60, 0.50, 0.45)])
    assert (aug.rounds, aug.ars.std) == (1, 0.0)
    assert aug.ars.mean == pytest.approx(0.302078, abs=1e-6)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"real_hard must be an accuracy in \[0, 1\], got 56.5 \(a percent"):
        LabelAccuracies(real_hard=56.5, syn_hard=0.5, syn_any=0.5, random_any=0.5)
    with pytest.raises(ValueError, match="random_plain"):
        AugmentationAccuracies(0.5, 0.5, 0.5, float("nan"))
    with pytest.raises(ValueError, match="syn_hard"):
        LabelAccuracies(0.5, -0.1, 0.5, 0.5)
    with pytest.raises(ValueError, match="weight"):
        label_robust_score(LabelAccuracies(0.5, 0.5, 0.5, 0.5), weight=1.5)
    with pytest.raises(ValueError, match="at least one round"):
        label_robust_summary([])
