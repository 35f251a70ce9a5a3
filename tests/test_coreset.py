"""Coreset baselines: random, herding, k-center, and the embedding features they use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.training.settings import TrainSettings
from workers.coreset import embed_features, herding, k_center, select_coreset


def _labelled(per_class: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in per_class.items()])
    return torch.randn(len(labels), 1, 4, 4, generator=torch.Generator().manual_seed(0)), labels


def test_random_is_deterministic_per_seed_and_per_class():
    images, labels = _labelled({0: 30, 1: 30, 2: 30})
    first = select_coreset("random", images, labels, 5, class_ids=[0, 1, 2], seed=7)
    assert torch.equal(first, select_coreset("random", images, labels, 5, class_ids=[0, 1, 2], seed=7))
    assert not torch.equal(first, select_coreset("random", images, labels, 5, class_ids=[0, 1, 2], seed=8))
    assert labels[first].tolist() == [0] * 5 + [1] * 5 + [2] * 5  # class-major, like DM's output
    assert len(set(first.tolist())) == 15
    # positions within each class differ between classes: each class has its own stream
    within = [(first[5 * k : 5 * k + 5] - 30 * k).tolist() for k in range(3)]
    assert within[0] != within[1] != within[2]
    # a class's picks do not depend on which other classes are in the call
    alone = select_coreset("random", images, labels, 5, class_ids=[1], seed=7)
    assert torch.equal(alone, first[5:10])


def test_herding_follows_the_greedy_mean_matching_sequence():
    # Class mean is (1, 0). Step 1: (1, 0.1) is nearest the mean. Step 2: the running
    # mean (1, 0.1) needs a partner with y near -0.1: (1, -0.2) gives (1, -0.05),
    # closer than (4, 0) -> (2.5, 0.05) or (-3, 0) -> (-1, 0.05).
    feats = torch.tensor([[4.0, 0.0], [1.0, 0.1], [-3.0, 0.0], [1.0, -0.2], [2.0, 0.1]])
    assert herding(feats, 3).tolist()[:2] == [1, 3]
    # Step 3 by hand: sum so far (2, -0.1); candidates c give |(2 + c) / 3 - (1, 0)|.
    target = feats.mean(0)
    rest = [0, 2, 4]
    gaps = [(((feats[1] + feats[3] + feats[i]) / 3) - target).norm().item() for i in rest]
    assert herding(feats, 3).tolist()[2] == rest[gaps.index(min(gaps))]


def test_herding_and_k_center_through_select_coreset_pick_within_each_class():
    feats = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.5, 0.0], [-10.0, 0.0],  # class 0
                          [5.0, 5.0], [6.0, 5.0], [5.0, 20.0]])  # class 1
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    images = torch.zeros(7, 1, 2, 2)
    kc = select_coreset("k_center", images, labels, 2, class_ids=[1, 0], seed=0, features=feats)
    # class 1 mean (5.33, 10): nearest is index 4 (5,5) vs 5 (6,5): |(-.33,-5)| < |(.67,-5)|; farthest from it: 6
    # class 0 mean (0.125, 0): nearest index 0; farthest from it: 1 (10) ties -10 -> lowest index
    assert kc.tolist() == [4, 6, 0, 1]
    hd = select_coreset("herding", images, labels, 1, class_ids=[0], seed=0, features=feats)
    assert hd.tolist() == [0]  # (0, 0) is the closest single point to the class mean (0.125, 0)


def test_k_center_picks_the_farthest_points():
    # a cluster at the origin and three outliers at increasing distance
    feats = torch.cat([torch.randn(20, 3, generator=torch.Generator().manual_seed(1)) * 0.1,
                       torch.tensor([[5.0, 0, 0], [0, -8.0, 0], [0, 0, 12.0]])])
    picks = k_center(feats, 4).tolist()
    assert picks[1:] == [22, 21, 20]  # farthest first, then farthest from everything picked
    centre = (feats - feats.mean(0)).norm(dim=1).argmin().item()
    assert picks[0] == centre
    assert len(set(k_center(torch.zeros(5, 2), 5).tolist())) == 5  # duplicates never picked twice


def test_errors_name_the_problem():
    images, labels = _labelled({0: 10, 3: 2})
    with pytest.raises(ValueError, match="class 3 has 2 images"):
        select_coreset("random", images, labels, 4, class_ids=[0, 3], seed=0)
    with pytest.raises(ValueError, match="features"):
        select_coreset("herding", images, labels, 1, class_ids=[0], seed=0)
    with pytest.raises(ValueError, match="unknown coreset method"):
        select_coreset("influence", images, labels, 1, class_ids=[0], seed=0)
    with pytest.raises(ValueError, match="forgetting selects on forgetting scores"):
        select_coreset("forgetting", images, labels, 1, class_ids=[0], seed=0)


def test_forgetting_picks_the_most_forgotten_never_learned_first_ties_from_the_seed():
    images, labels = _labelled({0: 6, 1: 4})
    never = 1_000_000
    scores = {0: np.array([0, 3, never, 3, np.nan, 1.0]), 1: np.array([2.0, 2.0, 2.0, 2.0])}
    idx = select_coreset("forgetting", images, labels, 3, class_ids=[0, 1], seed=5, scores=scores)
    class0, class1 = idx[:3].tolist(), idx[3:].tolist()
    assert class0[0] == 2 and set(class0[1:]) == {1, 3}  # never learned, then the two most forgotten
    assert all(labels[i] == 1 for i in class1) and len(set(class1)) == 3  # all tied: the seed decides
    again = select_coreset("forgetting", images, labels, 3, class_ids=[0, 1], seed=5, scores=scores)
    other = [select_coreset("forgetting", images, labels, 3, class_ids=[1], seed=s, scores=scores).tolist()
             for s in range(8)]
    assert torch.equal(idx, again) and len({tuple(o) for o in other}) > 1
    with pytest.raises(ValueError, match="only 5 images of the class have forgetting scores"):
        select_coreset("forgetting", images, labels, 6, class_ids=[0], seed=0, scores=scores)


def test_embed_features_random_and_trained():
    images, labels = _labelled({0: 6, 1: 6})
    args = dict(model_name="ConvNetW32D1", channels=1, num_classes=2, im_size=(4, 4), device="cpu", batch=5)
    feats = embed_features(images, seed=3, **args)
    # grey inputs are padded by 3 in the first conv: 4x4 -> 8x8 -> pooled 4x4
    assert feats.shape == (12, 32 * 4 * 4) and feats.dtype == torch.float32
    assert torch.equal(feats, embed_features(images, seed=3, **args))
    assert not torch.equal(feats, embed_features(images, seed=4, **args))
    trained = embed_features(images, seed=3, train=TrainSettings(epochs=2), labels=labels, **args)
    assert trained.shape == feats.shape and not torch.equal(trained, feats)
    faster = embed_features(images, seed=3, train=TrainSettings(epochs=2, lr=0.1), labels=labels, **args)
    assert not torch.equal(faster, trained)  # the settings given are the ones trained with
    with pytest.raises(ValueError, match="labels"):
        embed_features(images, seed=3, train=TrainSettings(epochs=1), **args)
