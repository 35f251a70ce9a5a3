"""The report's loss picture: one curve per shard while they can be told apart, their spread beyond."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.artifacts.shards import ShardManifest
from orchestrator.config import load_config
from orchestrator.report import LOSS_CURVES, loss_name, loss_png, loss_spread

from .conftest import REPO


def _manifest(shard: int, loss: float, iterations: int = 100) -> ShardManifest:
    curve = [[float(i), loss] for i in range(0, iterations + 1, 10)]
    return ShardManifest(shard_id=shard, classes=[shard], seed=shard, rows=1, sha256="", files={}, iterations=iterations,
                         resumed_from=0, wall_time_s=1.0, final_loss=loss, loss_curve=curve, device="cpu", host="h")


def test_many_shards_are_drawn_as_their_median_and_percentile_band():
    shards = [_manifest(k, float(k + 1)) for k in range(30)]  # shard k's loss: k + 1 at every iteration
    spread = loss_spread(shards, points=11)
    assert spread.shards == 30 and spread.iterations[0] == 0 and spread.iterations[-1] == 100
    assert spread.median == pytest.approx([15.5] * 11)  # median of 1..30
    assert spread.low == pytest.approx([float(np.percentile(np.arange(1, 31), 10))] * 11)
    assert spread.high == pytest.approx([float(np.percentile(np.arange(1, 31), 90))] * 11)


def test_shards_of_other_lengths_share_one_iteration_grid():
    spread = loss_spread([_manifest(0, 1.0, iterations=100), _manifest(1, 3.0, iterations=50)], points=3)
    assert spread.iterations == [0, 50, 100]
    assert spread.median == pytest.approx([2.0, 2.0, 2.0])  # the shorter curve holds its last value


@pytest.mark.parametrize("shards", [3, LOSS_CURVES + 1, 200])
def test_the_loss_picture_is_a_png_at_any_shard_count(shards):
    data = loss_png([_manifest(k, float(k + 1)) for k in range(shards)] + [_manifest(shards, 1.0, iterations=0)],
                    "DM loss")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("config, name", [("cifar10-ipc10", "DM loss"), ("cifar10-ipc10-m3d", "MMD (rbf kernel)"),
                                          ("cifar10-ipc10-idm", "DM loss + cross-entropy"),
                                          ("cifar10-ipc10-ncfm", "characteristic-function distance + cross-entropy")])
def test_the_loss_picture_names_the_loss_the_recipe_minimises(config, name):
    assert loss_name(load_config(str(REPO / "configs" / f"{config}.yaml"), []).condense) == name
