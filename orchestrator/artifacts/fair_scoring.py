"""DD-Ranking's fair scores of a run's stored rounds (``orchestrator.fair_scores`` computes them
from accuracies): per network, the accuracies each score needs gathered from the score store
(the random set's round, this set's hard-label round, the other augmentation's) and from the
run's pool (the real data's accuracy, resolved where the run is opened)."""

from __future__ import annotations

from dataclasses import asdict, replace

from orchestrator.artifacts.scores import Score, stored_scores
from orchestrator.evaluation_plan import settings_key
from orchestrator.fair_scores import RoundAccuracies, round_scores
from orchestrator.run_dir import RunDir


def with_fair_scores(run: RunDir, scores: list[Score], test_classes: list[int] | None = None) -> list[Score]:
    """``scores`` with DD-Ranking's scores per round (one seed: the same network initialisation for
    every method): IOR against the random set's network of the same seed under the same protocol;
    HLR and LRS where the real data's accuracy (the pool's final states, on its validation split:
    ``Resolved.real_accuracy``) and this set's hard-label score are known; ARS where the round is
    also scored with the other ``evaluate.augment``. The stored rounds are read once."""
    by_network = {s.network: s.accuracy for s in scores}
    hard = by_network if run.config.evaluate.protocol_labels == "hard" else {
        s.network: s.accuracy for s in hard_label_scores(run, test_classes)}
    other = {s.network: s.accuracy for s in other_augmentation_scores(run, test_classes)}
    real, augmented = run.resolved.real_accuracy, run.config.evaluate.augment
    out = []
    for s in scores:
        rnd = ("random", s.model, s.seed)
        fair = round_scores(RoundAccuracies(s.accuracy, by_network.get(rnd), hard.get(s.network), real, augmented,
                                            other.get(s.network), other.get(rnd)))
        out.append(replace(s, **asdict(fair)))
    return out


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
