"""Coreset baselines: random, herding, k-center and forgetting selection, class by class.

``select_coreset`` returns indices into ``images`` laid out like DM's synthetic
set: class after class in ``class_ids`` order, ``ipc`` per class, in selection
order, so ``images[idx], labels[idx]`` is the coreset. Every class is selected
on its own (its own random stream, its own features), so the selection of a
class does not depend on which other classes are in the call.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from workers.seeding import derive_seed, generator
from workers.training.plain import fresh_network, train_network
from workers.training.settings import TrainSettings

METHODS = ("random", "herding", "k_center", "forgetting")


def select_coreset(
    method: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    ipc: int,
    *,
    class_ids: Sequence[int],
    seed: int,
    features: torch.Tensor | None = None,
    scores: dict[int, np.ndarray] | None = None,
) -> torch.Tensor:
    """int64 indices of ``ipc`` images per class of ``class_ids``, class-major.

    ``random`` draws from a stream derived from (seed, class id); ``herding`` and
    ``k_center`` work on ``features`` ``[N, D]`` (e.g. from ``embed_features``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown coreset method {method!r}; choose one of {', '.join(METHODS)}")
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    if labels.dim() != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be [N] with N = len(images) = {len(images)}, got {list(labels.shape)}")
    if method in ("herding", "k_center"):
        if features is None:
            raise ValueError(f"{method} selects on embedding features: pass features=embed_features(...)")
        if features.dim() != 2 or len(features) != len(images):
            raise ValueError(f"features must be [N, D] with N = len(images) = {len(images)}, got {list(features.shape)}")
    chosen = []
    for c in class_ids:
        members = torch.nonzero(labels.cpu() == c).flatten()
        if len(members) < ipc:
            raise ValueError(
                f"class {c} has {len(members)} images but ipc={ipc} were asked for; "
                "lower ipc or drop the class"
            )
        if method == "random":
            picks = torch.randperm(len(members), generator=generator(derive_seed(seed, "coreset", c)))[:ipc]
        elif method == "forgetting":
            picks = most_forgotten(_class_scores(scores, c, len(members)), ipc, derive_seed(seed, "coreset", c))
        else:
            feats = features[members.to(features.device)].double()
            picks = (herding if method == "herding" else k_center)(feats, ipc).cpu()
        chosen.append(members[picks])
    return torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.int64)


def _class_scores(scores: dict[int, np.ndarray] | None, c: int, n: int) -> np.ndarray:
    if scores is None or c not in scores or len(scores[c]) != n:
        raise ValueError(f"forgetting selects on forgetting scores: pass scores[{c}] with one per image of the class "
                         f"({n})")
    return scores[c]


def most_forgotten(scores: np.ndarray, k: int, seed: int) -> torch.Tensor:
    """The ``k`` positions with the highest scores (NaN: never scored, never chosen), ties
    broken by a permutation drawn from ``seed``."""
    known = np.flatnonzero(~np.isnan(scores))
    if len(known) < k:
        raise ValueError(f"only {len(known)} images of the class have forgetting scores, {k} were asked for")
    tie = np.random.default_rng(seed).permutation(len(scores))
    order = known[np.lexsort((tie[known], -scores[known]))]  # by score descending, then by the draw
    return torch.from_numpy(order[:k].astype(np.int64))


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy mean matching: each step adds the sample that brings the mean of the
    selected features closest to the mean of all ``features``. Ties: lowest index."""
    target = features.mean(dim=0)
    total = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    picks = []
    for step in range(1, k + 1):
        gaps = ((total + features) / step - target).norm(dim=1)
        gaps[~available] = float("inf")
        i = int(gaps.argmin())
        picks.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(picks, dtype=torch.int64)


def k_center(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy farthest point: start at the sample closest to the mean, then add the
    sample farthest from everything selected so far. Ties: lowest index."""
    first = int((features - features.mean(dim=0)).norm(dim=1).argmin())
    picks = [first]
    nearest = (features - features[first]).norm(dim=1)
    nearest[first] = -1.0  # never again, even when every other sample duplicates a pick
    for _ in range(1, k):
        i = int(nearest.argmax())
        picks.append(i)
        nearest = torch.minimum(nearest, (features - features[i]).norm(dim=1))
        nearest[i] = -1.0
    return torch.tensor(picks, dtype=torch.int64)


@torch.no_grad()
def _embed(net: torch.nn.Module, images: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    net.eval()
    parts = [net.embed(images[s : s + batch].to(device)).cpu() for s in range(0, len(images), batch)]
    return torch.cat(parts)


def embed_features(
    images_float: torch.Tensor,
    model_name: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    seed: int,
    device: torch.device | str,
    batch: int = 512,
    train: TrainSettings | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """CPU float features ``[N, D]`` of ``net.embed`` for normalised float images.

    The network is initialised from ``seed``; with ``train`` it is first trained on
    (images_float, labels) with those settings (the caller's evaluation protocol).
    """
    if not images_float.is_floating_point():
        raise ValueError(f"images_float must be normalised float images, got {images_float.dtype}; normalise them first")
    device = torch.device(device)
    net = fresh_network(model_name, channels=channels, num_classes=num_classes, im_size=im_size, seed=seed, device=device)
    if train is not None:
        if labels is None or len(labels) != len(images_float):
            raise ValueError("training the embedding network needs labels [N] for images_float")
        train_network(net, images_float.to(device), labels.to(device), train, seed)
    return _embed(net, images_float, batch, device)
