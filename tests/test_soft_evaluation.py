"""Soft-label evaluation through the stages, its teacher refused at plan time when it does not fit,
and DD-Ranking's fair scores in the results."""

from __future__ import annotations

import pytest
import torch

from orchestrator.artifacts.scores import Score, read_results, with_fair_scores
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
    rows = read_results(RunDir.load(run))
    assert all(r.hlr is not None and r.lrs is not None for r in rows)  # now both protocols are scored
    datasets = pytest.importorskip("datasets")
    assert main(["export", run, "--format", "hf", "--to", str(tmp_path / "hf")]) == 0
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    probabilities = torch.tensor(loaded["soft_label"])
    assert probabilities.shape == (10, 10) and torch.allclose(probabilities.sum(1), torch.ones(10), atol=1e-5)
    assert "pool's best network" in loaded.info.description
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "soft labels from the pool's best network" in card and "| hard labels |" in card
