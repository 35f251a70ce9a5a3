"""One precision rule for condensation and evaluation, set around each step and put back after,
so that two configurations in one process (the benchmark's variants) never mix."""

from __future__ import annotations

import contextlib

import torch

from workers.devices import Precision
from workers.dm import DMCondenser, DMSettings

from .test_dm import tiny_set

CUDA = torch.device("cuda")  # only the process-global switches are touched: no GPU needed


def _flags() -> tuple:
    return (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
            torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)


def test_numerics_set_the_rule_inside_and_put_the_previous_switches_back():
    before = _flags()
    with Precision().numerics(CUDA):
        assert _flags()[:3] == ("tf32", "tf32", False)  # TF32 on by default, for matmuls and convolutions
        with Precision(tf32=False, deterministic=True).numerics(CUDA):
            assert _flags() == ("ieee", "ieee", True, True)
        assert _flags()[:3] == ("tf32", "tf32", False)
    assert _flags() == before
    with Precision(tf32=False).numerics(torch.device("cpu")):  # the CPU has nothing to switch
        assert _flags() == before


def test_every_step_runs_under_its_own_settings_however_condensers_interleave(monkeypatch):
    seen: list[bool] = []
    real = Precision.numerics

    @contextlib.contextmanager
    def spy(self, device):  # noqa: ANN001, ANN202
        seen.append(self.tf32)
        with real(self, device):
            yield

    monkeypatch.setattr(Precision, "numerics", spy)
    data, info = tiny_set()
    condensers = [DMCondenser(data, info, [0, 1, 2], DMSettings(ipc=1, iterations=4, batch_real=4,
                                                               model="ConvNetW32", precision=Precision(tf32=t)), 0)
                  for t in (True, False)]
    assert seen == []  # building a condenser sets nothing: the last one built no longer wins
    for _ in range(2):
        for c in condensers:
            c.step()
    assert seen == [True, False, True, False]


def test_training_and_scoring_run_under_the_rule_too(monkeypatch):
    from workers.data.types import DatasetInfo
    from workers.training.evaluation import train_and_score
    from workers.training.settings import TrainSettings

    seen: list[Precision] = []
    real = Precision.numerics

    @contextlib.contextmanager
    def spy(self, device):  # noqa: ANN001, ANN202
        seen.append(self)
        with real(self, device):
            yield

    monkeypatch.setattr(Precision, "numerics", spy)
    rule = Precision(tf32=False, deterministic=True)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(4).repeat(2)
    info = DatasetInfo("tiny", ["0", "1", "2", "3"], 1, (8, 8), (0.0,), (1.0,), (2,) * 4, (2,) * 4)
    train_and_score("ConvNetW32", x, y, x, y, info, TrainSettings(epochs=1, batch=4, precision=rule), [0])
    assert seen == [rule, rule]  # training, then scoring
