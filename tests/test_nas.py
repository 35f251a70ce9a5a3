"""The NAS proxy's arithmetic: the search space, the sample, the correlations."""

from __future__ import annotations

import pytest

from orchestrator.config import NasSpace, load_config
from orchestrator.run_dir import RunError
from orchestrator.artifacts.nas_results import NasScore, proxy_qualities
from orchestrator.stages.nas import architectures, sampled, step_budget
from workers.networks import build_network
from workers.pool_training import validation_split


def test_the_papers_search_space_holds_720_convnets_the_registry_builds():
    names = architectures(NasSpace())
    assert len(names) == len(set(names)) == 720
    for name in names[::37]:  # every value of every dimension is a registry name part
        build_network(name, 3, 10, (32, 32))


def test_the_sample_is_seeded_and_checked_against_the_image_size():
    cfg = load_config(None, ["nas.sample=50"])
    first = sampled(cfg, (3, 32, 32), 10)
    assert len(first) == 50 and first == sampled(cfg, (3, 32, 32), 10)
    assert first != sampled(load_config(None, ["nas.sample=50", "nas.seed=1"]), (3, 32, 32), 10)
    with pytest.raises(RunError, match="cannot be built for 8x8 images"):
        sampled(load_config(None, ["nas.space.depths=[4]", "nas.space.pools=[maxpooling]"]), (1, 8, 8), 10)


def _scores(proxy: list[float], whole: list[float]) -> list[NasScore]:
    names = [f"a{i}" for i in range(len(proxy))]
    return ([NasScore(n, "synthetic", p, 1.0) for n, p in zip(names, proxy)]
            + [NasScore(n, "whole", w, 10.0) for n, w in zip(names, whole)])


def test_spearman_over_the_top_architectures_and_over_all():
    # 20 architectures: proxy and whole-set accuracies agree in order except that the proxy's two
    # best are swapped on the whole set
    proxy = [i / 20 for i in range(20)]
    whole = proxy[:18] + [proxy[19], proxy[18]]
    [q] = proxy_qualities(_scores(proxy, whole), top_fraction=0.05)
    assert q.spearman_top == pytest.approx(-1.0)  # the top 5% of 20: at least two, in reverse order
    assert q.spearman_all == pytest.approx(1 - 6 * 2 / (20 * (20**2 - 1)))  # two ranks off by one
    assert q.selected == "a19" and q.selected_whole_accuracy == proxy[18] and q.train_seconds == 20.0
    [q] = proxy_qualities(_scores(proxy, proxy), top_fraction=0.25)
    assert q.spearman_top == pytest.approx(1.0) and q.spearman_all == pytest.approx(1.0)
    [q] = proxy_qualities(_scores([0.5] * 4, [0.1, 0.2, 0.3, 0.4]), top_fraction=1.0)
    assert q.spearman_all == 0.0  # a proxy that ranks nothing apart correlates with nothing


def test_the_step_budget_counts_the_whole_set_as_the_validation_split_leaves_it():
    # digits-like: 10 classes of 121 images, 12 held out of each -> 1,090 to train on, 5 steps an epoch
    counts = [121] * 10
    train, _ = validation_split([c for c, n in enumerate(counts) for _ in range(n)], 0.1, seed=0)
    assert len(train) == 1090
    cfg = load_config(None, ["nas.epochs=100", "nas.whole_epochs=20"])
    assert step_budget(cfg, counts, proxy_size=100) == (100, 100)  # early stopping = the whole training
    assert step_budget(load_config(None, ["nas.epochs=50", "nas.whole_epochs=1"]), [5400] * 10, 100) == (50, 190)
