"""Soft-label evaluation through the stages, its teacher refused at plan time when it does not fit,
and DD-Ranking's fair scores in the results."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.artifacts.fair_scoring import with_fair_scores
from orchestrator.artifacts.scores import Score, read_results, write_job_scores
from orchestrator.evaluation_plan import settings_key
from orchestrator.run_opening import resolve
from orchestrator.components.settings import train_settings
from orchestrator.cli import main
from orchestrator.run_dir import RunDir

from .test_run_integrity import DIGITS, TINY, _committed_run, _one_line, _sets


def _resnet_weights(path, classes: int) -> str:  # noqa: ANN001
    import torchvision

    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=classes).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("problem, expected", [
    ("classes", "are for 100 classes"),
    ("unreadable", "are not a torch file of tensors"),
    ("missing", "no such file"),
])
def test_a_teacher_that_does_not_fit_is_refused_before_any_work(problem, expected, tmp_path, capsys):
    import ray

    run = _committed_run(str(tmp_path / "run"))
    weights = tmp_path / "teacher.pt"
    if problem == "classes":
        _resnet_weights(weights, 100)
    elif problem == "unreadable":
        weights.write_bytes(b"not a state dict")
    teacher = ["evaluate.labels=soft", "evaluate.teacher.source=torchvision", "evaluate.teacher.arch=resnet18",
               f"evaluate.teacher.weights={weights}", "evaluate.num_models=1"]
    assert main(["evaluate", run.uri, *_sets(*teacher)]) == 2
    message = _one_line(capsys)
    assert message.startswith("error: evaluate.teacher") and expected in message.lower(), message
    assert not ray.is_initialized()


def test_a_soft_evaluation_needs_its_pool_made_first(tmp_path, capsys):
    run = _committed_run(str(tmp_path / "run"))
    assert main(["evaluate", run.uri, *_sets("evaluate.labels=soft")]) == 2
    message = _one_line(capsys)
    assert "no pool made" in message and f"dmcondense pool {run.uri}" in message and "--make-pool" in message


def test_fair_scores_pair_each_network_with_the_random_one_of_its_seed(tmp_path):
    run = _committed_run(str(tmp_path / "run"))

    def score(method: str, seed: int, accuracy: float) -> Score:
        return Score(method, "ConvNet", seed, accuracy, 1, 1.0, "cpu", "key", "data")

    scores = [score("dm", 1, 0.9), score("dm", 2, 0.8), score("random", 1, 0.7), score("random", 2, 0.75)]
    fair = {(s.method, s.seed): s for s in with_fair_scores(run, scores)}
    assert fair["dm", 1].ior == pytest.approx(0.2) and fair["dm", 2].ior == pytest.approx(0.05)
    assert fair["random", 1].ior == 0.0
    assert fair["dm", 1].hlr is None and fair["dm", 1].lrs is None  # no pool: no real-data accuracy


def test_ars_pairs_each_round_with_the_same_seed_scored_without_augmentation(tmp_path):
    """Round 1: with aug 0.60 - 0.50 = 0.10, without 0.40 - 0.45 = -0.05: beta = 0.025,
    ARS = (e^0.025 - e^-1) / (e - e^-1) = (1.025315 - 0.367879) / 2.350402 = 0.279712."""
    run = _committed_run(str(tmp_path / "run"))
    keys = run.resolved.evaluation.data_keys

    def score(method: str, seed: int, accuracy: float, cfg) -> Score:  # noqa: ANN001
        return Score(method, "ConvNet", seed, accuracy, 1, 1.0, "cpu", settings_key(cfg), keys.get(method, "a random set"))

    plain_cfg = run.config.model_copy(update={"evaluate": run.config.evaluate.model_copy(update={"augment": False})})
    for method, accuracy in (("dm", 0.40), ("random", 0.45)):  # seed 1 only: seed 2 has no plain round
        write_job_scores(run, [score(method, 1, accuracy, plain_cfg)])
    augmented = [score("dm", 1, 0.60, run.config), score("random", 1, 0.50, run.config),
                 score("dm", 2, 0.70, run.config), score("random", 2, 0.50, run.config)]
    fair = {(s.method, s.seed): s for s in with_fair_scores(run, augmented)}
    assert fair["dm", 1].ars == pytest.approx(0.279712, abs=1e-6)
    assert fair["random", 1].ars == pytest.approx(1 / (1 + math.e))  # random against itself: beta = 0
    assert fair["dm", 2].ars is None
    for augmented_score in augmented:
        write_job_scores(run, [augmented_score])
    plain = {(s.method, s.seed): s for s in with_fair_scores(resolve(run.with_config(plain_cfg)),
                                                              [score("dm", 1, 0.40, plain_cfg),
                                                               score("random", 1, 0.45, plain_cfg)])}
    assert plain["dm", 1].ars == pytest.approx(0.279712, abs=1e-6)  # the same round seen from the other side


def test_an_evaluation_without_augmentation_trains_plain_under_its_own_key(tmp_path):
    run = _committed_run(str(tmp_path / "run"))
    plain_cfg = run.config.model_copy(update={"evaluate": run.config.evaluate.model_copy(
        update={"augment": False, "coreset_feature_epochs": 1})})
    assert train_settings(run.config, "evaluate").augments and not train_settings(plain_cfg, "evaluate").augments
    assert train_settings(plain_cfg, "coreset_features").augments  # the baselines' selections stay as they were
    assert settings_key(plain_cfg) != settings_key(run.config)


@pytest.mark.ray
def test_soft_labels_run_through_the_stages_and_resume_with_nothing_scored_again(tmp_path, capsys):
    pool = ["pool.networks=1", "pool.epochs=1", "pool.states_every=4", "pool.model=ConvNetW32",
            f"pool.uri={tmp_path / 'pools'}"]
    soft = [*TINY, *pool, "evaluate.num_models=2", "evaluate.epochs=3", "evaluate.models=[ConvNetW32]",
            "evaluate.baselines=[random]", "evaluate.labels=soft"]
    run = str(tmp_path / "soft")
    assert main(["run", DIGITS, *_sets(*soft), "--out", run, "--make-pool"]) == 0
    out = capsys.readouterr().out
    assert "IOR" in out and "HLR" in out
    rows = read_results(RunDir.load(run))
    assert {r.method for r in rows} == {"dm", "random"} and all(r.ior is not None for r in rows)
    assert all(r.hlr is None for r in rows)  # the hard-label scores of this run are not there yet
    assert "soft labels from the pool's best network at temperature 1.2" in open(f"{run}/report.md").read()
    assert main(["evaluate", run, *_sets("evaluate.labels=hard")]) == 0  # the hard-label protocol beside it
    capsys.readouterr()
    assert main(["evaluate", run, *_sets("evaluate.labels=soft")]) == 0  # scored: nothing trains again
    out = capsys.readouterr().out
    assert "evaluate:" not in out.replace("evaluate: 0 of", "")  # no progress line: no job ran
    before_plain = rows = read_results(RunDir.load(run))
    assert all(r.hlr is not None and r.lrs is not None for r in rows)  # now both protocols are scored
    assert all(r.ars is None for r in rows) and "| ARS |" in open(f"{run}/report.md").read()
    assert main(["evaluate", run, *_sets("evaluate.labels=soft", "evaluate.augment=false")]) == 0
    assert "without augmentation" in open(f"{run}/report.md").read()
    rows = read_results(RunDir.load(run))
    assert all(r.ars is not None for r in rows)  # each round now scored with and without augmentation
    assert len({r.accuracy for r in rows} - {r.accuracy for r in before_plain}) > 0
    assert main(["evaluate", run, *_sets("evaluate.augment=true")]) == 0  # back to the augmented side: nothing trains
    rows = read_results(RunDir.load(run))
    assert [r.accuracy for r in rows] == [r.accuracy for r in before_plain] and all(r.ars is not None for r in rows)
    capsys.readouterr()
    datasets = pytest.importorskip("datasets")
    assert main(["export", run, "--format", "hf", "--to", str(tmp_path / "hf")]) == 0
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    probabilities = torch.tensor(loaded["soft_label"])
    assert probabilities.shape == (10, 10) and torch.allclose(probabilities.sum(1), torch.ones(10), atol=1e-5)
    assert "pool's best network" in loaded.info.description
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "soft labels from the pool's best network" in card and "| paper: hard labels |" in card
