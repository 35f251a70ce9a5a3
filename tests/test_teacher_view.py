"""The teacher's view of a set: its accuracy and true-class probability, against hand values."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmarks.teacher_view import teacher_view


class ChannelLogits(nn.Module):
    """A teacher whose logits are the image's top-left pixel, one class per channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0, 0]


def test_teacher_view_scores_the_true_class_at_both_temperatures():
    images = torch.zeros(2, 2, 4, 4)
    images[0, :, 0, 0] = torch.tensor([2.0, 0.0])  # the teacher says class 0, and it is class 0
    images[1, :, 0, 0] = torch.tensor([1.0, 0.0])  # the teacher says class 0, but it is class 1
    view = teacher_view(ChannelLogits(), images, torch.tensor([0, 1]), temperature=2.0)
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731  two-class softmax of the margin
    assert view.images == 2 and view.accuracy == 0.5
    assert view.p_true == pytest.approx((sigmoid(2.0) + sigmoid(-1.0)) / 2)
    assert view.p_true_soft == pytest.approx((sigmoid(1.0) + sigmoid(-0.5)) / 2)
