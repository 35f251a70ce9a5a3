"""Teachers: torchvision architectures with local weights and the project's own networks load to
the logits they were saved with; every problem is refused in one line before any training."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from workers.network_costs import FP32_BYTES
from workers.teachers import (
    NetworkTeacher,
    TeacherMemory,
    TorchvisionTeacher,
    check_forward,
    inference_memory,
    load_teacher,
    teacher_memory,
)
from workers.training.memory import models_per_step
from workers.training.plain import fresh_network

CIFAR = dict(channels=3, num_classes=10, im_size=(32, 32))


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Any download attempt fails the test: no connection, no hub, an empty torch home."""
    def refuse(*args, **kwargs):
        raise AssertionError("a teacher tried to download something")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    yield
    assert not (tmp_path / "torch-home").exists()


@pytest.fixture(autouse=True)
def one_thread():
    """One image at a time: a second thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _saved(tmp_path: Path, arch: str, num_classes: int, wrap: bool = False, seed: int = 0) -> tuple[nn.Module, Path]:
    torch.manual_seed(seed)
    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes).eval()
    path = tmp_path / f"{arch}-{num_classes}.pt"
    torch.save({"state_dict": net.state_dict()} if wrap else net.state_dict(), path)
    return net, path


def _refusal(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_torchvision_resnet18_loads_to_the_logits_it_was_saved_with(tmp_path):
    saved, path = _saved(tmp_path, "resnet18", 10)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = saved(x)
    for location in (str(path), path.as_uri()):  # a local path and a file:// URI
        teacher = load_teacher(TorchvisionTeacher("resnet18", location), **CIFAR, device="cpu")
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        with torch.no_grad():
            assert torch.equal(teacher(x), want)


def test_a_wrapped_state_dict_loads_too(tmp_path):
    saved, path = _saved(tmp_path, "squeezenet1_1", 10, wrap=True)
    teacher = load_teacher(TorchvisionTeacher("squeezenet1_1", str(path)), **CIFAR)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), saved(x))


def test_a_pool_style_convnet_state_loads():
    trained = fresh_network("ConvNetW32BN", **CIFAR, seed=3, device="cpu")
    with torch.no_grad():  # as a trained pool network: parameters and BN statistics moved off their start
        for t in (*trained.parameters(), *trained.buffers()):
            if t.is_floating_point():
                t.add_(0.1 * torch.randn_like(t)).abs_()
    teacher = load_teacher(NetworkTeacher("ConvNetW32BN", trained.state_dict()), **CIFAR)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), trained.eval()(x))


def test_unreadable_weights_are_named(tmp_path):
    missing = tmp_path / "nowhere" / "teacher.pt"
    with pytest.raises(ValueError) as excinfo:
        load_teacher(TorchvisionTeacher("resnet18", str(missing)), **CIFAR)
    assert f"teacher weights {missing}: no such file" in _refusal(excinfo)

    with pytest.raises(ValueError) as excinfo:
        load_teacher(TorchvisionTeacher("squeezenet1_1", str(tmp_path)), **CIFAR)  # a folder
    assert "cannot be read" in _refusal(excinfo) and str(tmp_path) in _refusal(excinfo)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError) as excinfo:
        load_teacher(TorchvisionTeacher("squeezenet1_1", str(garbage)), **CIFAR)
    assert "not a torch file" in _refusal(excinfo) and "torch.save(model.state_dict()" in _refusal(excinfo)

    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(ValueError) as excinfo:
        load_teacher(TorchvisionTeacher("squeezenet1_1", str(a_list)), **CIFAR)
    assert "hold a list, not a state dict" in _refusal(excinfo)


def test_weights_of_another_architecture_are_refused(tmp_path):
    _, path = _saved(tmp_path, "squeezenet1_1", 10)
    with pytest.raises(ValueError) as excinfo:
        load_teacher(TorchvisionTeacher("squeezenet1_0", str(path)), **CIFAR)
    assert f"teacher weights {path} do not fit squeezenet1_0: missing keys features.5.squeeze.weight" \
        in _refusal(excinfo)

    state = torch.load(path, weights_only=True)
    prefixed = tmp_path / "parallel.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, prefixed)
    with pytest.raises(ValueError) as excinfo:
        load_teacher(TorchvisionTeacher("squeezenet1_1", str(prefixed)), **CIFAR)
    message = _refusal(excinfo)
    assert "missing keys features.0.weight" in message and "(+" in message and "model.module.state_dict()" in message


def test_a_state_for_another_image_size_is_refused():
    state = fresh_network("ConvNetW32", channels=3, num_classes=10, im_size=(16, 16), seed=0, device="cpu").state_dict()
    with pytest.raises(ValueError) as excinfo:
        load_teacher(NetworkTeacher("ConvNetW32", state), **CIFAR)
    assert ("the weights given for teacher ConvNetW32 do not fit ConvNetW32 for these images: "
            "classifier.weight is [10, 128] in the weights, [10, 512] here") in _refusal(excinfo)


def test_a_wrong_class_count_is_refused(tmp_path):
    _, path = _saved(tmp_path, "squeezenet1_1", 100)
    with pytest.raises(ValueError) as excinfo:
        load_teacher(TorchvisionTeacher("squeezenet1_1", str(path)), **CIFAR)
    assert "are for 100 classes (classifier.1.weight [100, 512, 1, 1]), the data has 10" in _refusal(excinfo)

    five = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5))  # caught by the forward
    with pytest.raises(ValueError) as excinfo:
        check_forward(five, "linear", 3, 10, (32, 32))
    assert "gives [1, 5] for one image, not [1, 10] logits" in _refusal(excinfo)


def test_inputs_the_architecture_cannot_take_are_refused(tmp_path):
    _, path = _saved(tmp_path, "squeezenet1_1", 10)
    with pytest.raises(ValueError) as excinfo:  # its pools leave nothing of an 8x8 image
        load_teacher(TorchvisionTeacher("squeezenet1_1", str(path)), channels=3, num_classes=10, im_size=(8, 8))
    assert "cannot take inputs of shape [1, 3, 8, 8]" in _refusal(excinfo)
    with pytest.raises(ValueError) as excinfo:  # torchvision's networks take 3 channels
        load_teacher(TorchvisionTeacher("squeezenet1_1", str(path)), channels=1, num_classes=10, im_size=(32, 32))
    assert "cannot take inputs of shape [1, 1, 32, 32]" in _refusal(excinfo)
    with pytest.raises(ValueError) as excinfo:
        load_teacher(NetworkTeacher("ConvNetD5", {}), channels=3, num_classes=10, im_size=(8, 8))
    assert "teacher ConvNetD5 cannot take 3x8x8 images" in _refusal(excinfo)


def test_unknown_architectures_are_named(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        load_teacher(TorchvisionTeacher("resnet19", str(tmp_path / "x.pt")), **CIFAR)
    assert "unknown torchvision classification model 'resnet19' (did you mean 'resnet18'?)" in _refusal(excinfo)
    with pytest.raises(ValueError, match="unknown network"):
        load_teacher(NetworkTeacher("ConvNett", {}), **CIFAR)


def test_memory_counts_weights_and_activations():
    spec = NetworkTeacher("ConvNetW32BN", {})
    memory = teacher_memory(spec, **CIFAR)
    net = fresh_network("ConvNetW32BN", **CIFAR, seed=0, device="cpu")
    weights = FP32_BYTES * sum(t.numel() for t in (*net.parameters(), *net.buffers()) if t.is_floating_point())
    assert memory.weights >= weights  # plus BatchNorm's int64 batch counters
    assert memory == inference_memory(net, (3, 32, 32))  # the project's count and the measured one agree
    assert memory.bytes(64) == memory.weights + 64 * memory.per_image
    # a 32-wide ConvNet keeps at least its first block's 32 maps of 32x32 per image
    assert memory.per_image > FP32_BYTES * 32 * 32 * 32

    tv = teacher_memory(TorchvisionTeacher("resnet18", "never-read.pt"), **CIFAR)
    assert 11.1e6 * FP32_BYTES < tv.weights < 11.3e6 * FP32_BYTES  # resnet18 with 10 classes: 11.18M numbers


def test_a_teacher_leaves_fewer_models_per_vectorised_step():
    shape, batch = (3, 32, 32), 64
    budget = 1 << 30
    alone = models_per_step("ConvNetW32", shape, 10, batch, budget)
    big = TeacherMemory(weights=budget // 2, per_image=0)
    assert models_per_step("ConvNetW32", shape, 10, batch, budget, big) == alone // 2
    busy = TeacherMemory(weights=0, per_image=10**9)
    assert models_per_step("ConvNetW32", shape, 10, batch, budget, busy) == 1
