"""DD-Ranking's fair scores of a run's stored rounds (``orchestrator.fair_scores`` computes them
from accuracies): per network, the accuracies each score needs gathered from the score store
(the random set's round, this set's hard-label round, the other augmentation's) and from the
run's pool (the real data's accuracy)."""

from __future__ import annotations

import statistics
from dataclasses import replace

from orchestrator.artifacts.pool_networks import network_state
from orchestrator.artifacts.scores import Score, stored_scores
from orchestrator.evaluation_plan import settings_key
from orchestrator.fair_scores import (
    AugmentationAccuracies, LabelAccuracies, augmentation_robust_score, label_robust_score,
)
from orchestrator.run_dir import RunDir


def with_fair_scores(run: RunDir, scores: list[Score], test_classes: list[int] | None = None) -> list[Score]:
    """``scores`` with DD-Ranking's scores per round (one seed: the same network initialisation for
    every method): IOR against the random set's network of the same seed under the same protocol;
    HLR and LRS where the real data's accuracy (the pool's final states, on its validation split)
    and this set's hard-label score are known; ARS where the round is also scored with the other
    ``evaluate.augment``."""
    by_network = {s.network: s.accuracy for s in scores}
    hard = by_network if run.config.evaluate.protocol_labels == "hard" else {
        s.network: s.accuracy for s in hard_label_scores(run, test_classes)}
    other = {s.network: s.accuracy for s in other_augmentation_scores(run, test_classes)}
    real = real_accuracy(run)
    out = []
    for s in scores:
        rnd, syn_hard = by_network.get(("random", s.model, s.seed)), hard.get(s.network)
        fair = {"ior": s.accuracy - rnd if rnd is not None else None,
                "hlr": real - syn_hard if real is not None and syn_hard is not None else None}
        if fair["ior"] is not None and fair["hlr"] is not None:
            fair["lrs"] = label_robust_score(LabelAccuracies(real, syn_hard, s.accuracy, rnd)).lrs  # type: ignore[arg-type]
        fair["ars"] = _augmentation_robust(run.config.evaluate.augment, s.accuracy, rnd, other.get(s.network),
                                           other.get(("random", s.model, s.seed)))
        out.append(replace(s, **fair))
    return out


def _augmentation_robust(augmented: bool, syn: float, rnd: float | None, syn_other: float | None,
                         rnd_other: float | None) -> float | None:
    """ARS of one round from this protocol's accuracies and the other augmentation's (None: one missing)."""
    if rnd is None or syn_other is None or rnd_other is None:
        return None
    mine, theirs = (syn, rnd), (syn_other, rnd_other)
    (syn_aug, rnd_aug), (syn_plain, rnd_plain) = (mine, theirs) if augmented else (theirs, mine)
    return augmentation_robust_score(AugmentationAccuracies(syn_aug, rnd_aug, syn_plain, rnd_plain)).ars


def real_accuracy(run: RunDir) -> float | None:
    """acc(real, hard): the mean validation accuracy of the final states of the run's pool (networks
    trained on the whole training split with hard labels); None without a committed pool."""
    pool = run.resolved.pool_dir
    finals = [st.manifest.val_accuracy[-1] for i in range(pool.networks)
              if (st := network_state(pool, i, deep=False)).state == "committed"]
    return statistics.fmean(finals) if finals else None


def hard_label_scores(run: RunDir, test_classes: list[int] | None = None) -> list[Score]:
    """The run's stored scores under its evaluation settings with hard labels (the paper protocol's)."""
    return _scores_under(run, test_classes, None, labels="hard", protocol="paper")


def other_augmentation_scores(run: RunDir, test_classes: list[int] | None = None) -> list[Score]:
    """The run's stored scores under its evaluation settings with the other ``evaluate.augment``."""
    teacher = run.resolved.teacher
    return _scores_under(run, test_classes, teacher.score_identity if teacher else None,
                         augment=not run.config.evaluate.augment)


def _scores_under(run: RunDir, test_classes: list[int] | None, teacher: str | None, **evaluate) -> list[Score]:
    cfg = run.config
    changed = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update=evaluate)})
    return stored_scores(run, settings_key(changed, test_classes, teacher), run.resolved.evaluation.data_keys)
