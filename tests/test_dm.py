"""The grouped DM loop: equal to the per-class algorithm, checkpointable, and useful."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest
import torch

from orchestrator.config import ConfigError, load_config
from workers.data.types import DatasetInfo, ImageSet
from workers.dm import ClassBank, DMCondenser, DMSettings
from benchmarks.reference_dm import ReferenceDM


def tiny_set(classes: int = 3, per_class: int = 12, size: int = 8, channels: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * per_class, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(classes).repeat_interleave(per_class)
    perm = torch.randperm(len(labels), generator=g)  # classes interleaved, as a reader may return them
    info = DatasetInfo("tiny", [str(c) for c in range(classes)], channels, (size, size), (0.5,) * channels,
                       (0.25,) * channels, (per_class,) * classes, (0,) * classes)
    return ImageSet(images[perm], labels[perm]), info


SETTINGS = DMSettings(ipc=2, iterations=6, batch_real=5, model="ConvNetW32", embed_chunk=4)


@pytest.mark.parametrize("model", ["ConvNetW32", "ConvNetBN"])
def test_grouped_loss_and_gradients_equal_per_class(model):
    real, info = tiny_set(classes=4, per_class=9)
    settings = DMSettings(ipc=2, iterations=3, batch_real=6, model=model, embed_chunk=5)
    grouped = DMCondenser(real, info, [0, 1, 2, 3], settings, seed=7)
    per_class = ReferenceDM(real, info, [0, 1, 2, 3], settings, seed=7)
    for _ in range(2):  # also after one update, when the images differ from their init
        loss_g = grouped.loss(grouped.draw())
        loss_r = per_class.loss(per_class.draw())
        grad_g, = torch.autograd.grad(loss_g, grouped.syn)
        grad_r, = torch.autograd.grad(loss_r, per_class.syn)
        torch.testing.assert_close(loss_g, loss_r, rtol=1e-5, atol=0)
        # channels_last (ours) vs contiguous (reference) sum in other orders: float noise
        # is relative to the largest gradient, not to each element; BatchNorm's statistics add
        # reductions of their own (one element reached 1.3e-5 of it on an AVX-512 core), while
        # a wrong gradient is off by a sizeable share of it
        scale = float(grad_r.abs().max())
        assert scale > 0
        torch.testing.assert_close(grad_g, grad_r, rtol=1e-5, atol=1e-4 * scale)
        grouped.step()
        per_class.step()
        torch.testing.assert_close(grouped.syn, per_class.syn, rtol=1e-5, atol=1e-5)  # unit-scale pixels after an update of that noise


def test_class_sampling_is_per_class_without_replacement():
    real, _ = tiny_set(classes=3, per_class=7)
    bank = ClassBank(real, [2, 0, 1], torch.device("cpu"))
    batch = bank.sample(5, torch.Generator().manual_seed(0))
    labels = real.labels[torch.argsort(torch.tensor([{2: 0, 0: 1, 1: 2}[c] for c in real.labels.tolist()]), stable=True)]
    for slot, cls in enumerate([2, 0, 1]):
        rows = batch.index[batch.groups == slot]
        assert len(rows) == 5 and len(set(rows.tolist())) == 5
        assert bank.images[rows].shape[0] == 5
        assert set(labels[rows].tolist()) == {cls}
    small = bank.sample(50, torch.Generator().manual_seed(0))  # more than a class holds: all of it
    assert small.counts.tolist() == [7.0, 7.0, 7.0]


def test_loss_decreases_and_images_move():
    real, info = tiny_set()
    c = DMCondenser(real, info, [0, 1, 2], DMSettings(ipc=2, iterations=30, batch_real=12, model="ConvNetW32",
                                                      dsa_strategy="none", lr_img=1.0), seed=0)
    start = c.syn.detach().clone()
    c.run()
    first = sum(v for _, v in c.losses[:5]) / 5
    last = sum(v for _, v in c.losses[-5:]) / 5
    assert last < first
    assert not torch.equal(start, c.syn.detach())


def test_bad_input_is_named():
    real, info = tiny_set(per_class=3)
    with pytest.raises(ValueError, match=r"fewer real images than the 5 that condense.ipc=5 \(x factor\^2 = 1\)"):
        DMCondenser(real, info, [0, 1, 2], DMSettings(ipc=5, iterations=1, model="ConvNetW32"), seed=0)
    with pytest.raises(ValueError, match=r"fewer real images than the 4 that condense.ipc=1 \(x factor\^2 = 4\)"):
        DMCondenser(real, info, [0, 1, 2], DMSettings(ipc=1, iterations=1, model="ConvNetW32", factor=2), seed=0)
    with pytest.raises(ConfigError, match="needs trained networks"):  # a rule of the config, checked there once
        load_config(None, ["condense.ce_weight=0.1"])
    with pytest.raises(ValueError, match="outside the group"):
        DMCondenser(real, info, [0, 1], DMSettings(ipc=1, iterations=1, model="ConvNetW32"), seed=0)
    with pytest.raises(ValueError, match="ipc must be >= 1"):
        DMSettings(ipc=0, iterations=1)


CHILD = textwrap.dedent(
    """
    import io, sys, torch
    sys.path.insert(0, {root!r})
    from tests.test_dm import tiny_set, SETTINGS
    from workers.dm import DMCondenser
    real, info = tiny_set()
    c = DMCondenser(real, info, [0, 1, 2], SETTINGS, seed=3)
    c.load_state_dict(torch.load(io.BytesIO(sys.stdin.buffer.read()), weights_only=False))
    c.run()
    buf = io.BytesIO(); torch.save(c.syn.detach(), buf); sys.stdout.buffer.write(buf.getvalue())
    """
)


def test_checkpoint_restored_in_a_new_process_continues_bit_identically():
    import pathlib

    real, info = tiny_set()
    straight = DMCondenser(real, info, [0, 1, 2], SETTINGS, seed=3)
    straight.run()
    saved = []
    first = DMCondenser(real, info, [0, 1, 2], SETTINGS, seed=3)
    first.run(until=3, checkpoint_every=2, on_checkpoint=saved.append)
    assert [s["iteration"] for s in saved] == [2]
    buf = io.BytesIO()
    torch.save(saved[0], buf)
    root = str(pathlib.Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=root)], input=buf.getvalue(),
                         capture_output=True, check=True, timeout=120)
    resumed = torch.load(io.BytesIO(out.stdout))
    assert torch.equal(resumed, straight.syn.detach())


def test_checkpoint_of_another_shard_is_refused():
    real, info = tiny_set()
    a = DMCondenser(real, info, [0, 1, 2], SETTINGS, seed=3)
    b = DMCondenser(real, info, [0, 1, 2], SETTINGS, seed=4)
    with pytest.raises(ValueError, match="another shard"):
        b.load_state_dict(a.state_dict())


def test_a_worker_that_cannot_compile_runs_eager_with_a_warning(monkeypatch):
    import workers.devices as devices

    monkeypatch.setattr(devices, "compiler_available", lambda: False)
    real, info = tiny_set()
    with pytest.warns(UserWarning, match=r"running eager on cpu: no C\+\+ compiler"):
        condenser = DMCondenser(real, info, [0, 1, 2], DMSettings(ipc=1, iterations=2, batch_real=4,
                                                                   model="ConvNetW32", compile=True), seed=0)
    assert condenser.compile_state.startswith("off: no C++ compiler")
    condenser.run()  # the shard goes on, eager
    assert condenser.iteration == 2


def test_compiling_for_cuda_needs_triton_and_a_recent_gpu(monkeypatch):
    import torch.utils._triton as triton

    import workers.devices as devices

    monkeypatch.setattr(devices, "compiler_available", lambda: True)
    monkeypatch.setattr(triton, "has_triton", lambda: False)
    assert "Triton is not installed" in devices.compile_problem(torch.device("cuda"))
    monkeypatch.setattr(triton, "has_triton", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    assert "compute capability 6.1 is below inductor's 7.0" in devices.compile_problem(torch.device("cuda"))
    assert devices.compile_problem(torch.device("cpu")) == ""
