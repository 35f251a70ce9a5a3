"""One DM iteration and one evaluation step wait for the device nowhere: proved on the CPU by
recording, under a TorchDispatchMode, every op that forces a host synchronisation on CUDA."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from workers.devices import Precision
from workers.dm import DMCondenser, DMSettings
from workers.training.optimizers import make_sgd
from workers.training.plain import fresh_network, train_step
from workers.training.settings import ModelStreams, TrainSettings

from .test_dm import tiny_set

# ops whose result the host must see before it can go on (a device-to-host copy)
_SYNC = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::bincount", "aten::unique",
         "aten::_unique", "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim", "aten::equal",
         "aten::is_nonzero", "aten::allclose", "aten::histc", "aten::nonzero_numpy"}
# a tensor built from host data (a Python list or number): on CUDA, a copy to the device per call
_HOST_TABLE = {"aten::lift_fresh", "aten::lift_fresh_copy"}


class SyncRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func._schema.name
        if name in _SYNC or name in _HOST_TABLE:
            self.found.append(name)
        elif name in ("aten::index", "aten::index_put", "aten::index_put_") and _bool_index(args[1]):
            self.found.append(f"{name} with a boolean mask")
        elif name == "aten::repeat_interleave" and isinstance(args[0], torch.Tensor) and len(args) < 3 \
                and not (kwargs or {}).get("output_size"):
            self.found.append("aten::repeat_interleave with tensor repeats")
        return func(*args, **(kwargs or {}))


def _bool_index(indices) -> bool:  # noqa: ANN001
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices if i is not None)


def _recorded(step) -> list[str]:  # noqa: ANN001
    step()  # the first call builds what is made once (op tables, optimizer state)
    with SyncRecorder() as recorder:
        step()
    return recorder.found


def test_the_recorder_sees_every_kind_of_synchronisation():
    x = torch.arange(6.0)
    with SyncRecorder() as recorder:
        float(x.sum())
        x[x > 2]
        torch.bincount(torch.tensor([1, 2]))
        torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3]))
        torch.nonzero(x)
    assert recorder.found == ["aten::_local_scalar_dense", "aten::index with a boolean mask", "aten::lift_fresh",
                              "aten::bincount", "aten::lift_fresh", "aten::repeat_interleave with tensor repeats",
                              "aten::nonzero"]


def test_one_dm_iteration_on_the_sync_free_path_never_waits_for_the_device():
    # classes of unequal size, fewer images than the real batch: the padded path is exercised
    real, info = tiny_set(classes=3, per_class=9)
    real.labels[-2:] = 0
    settings = DMSettings(ipc=2, iterations=5, batch_real=8, model="ConvNetW32", embed_chunk=4, sync_free=True,
                          precision=Precision(channels_last=True))
    condenser = DMCondenser(real, info, [0, 1, 2], settings, seed=3)
    assert _recorded(condenser.step) == []


def test_the_cpu_path_is_the_sorted_one_and_gives_the_same_images():
    real, info = tiny_set(classes=3, per_class=9)
    images = []
    for sync_free in (False, True):
        settings = DMSettings(ipc=2, iterations=3, batch_real=6, model="ConvNetW32", embed_chunk=4, sync_free=sync_free)
        condenser = DMCondenser(real, info, [0, 1, 2], settings, seed=3)
        condenser.run()
        images.append(condenser.syn.detach())
    torch.testing.assert_close(images[0], images[1], rtol=0, atol=1e-6)


def test_one_evaluation_step_never_waits_for_the_device():
    x, y = torch.randn(40, 1, 8, 8), torch.arange(4).repeat(10)
    settings = TrainSettings(epochs=1, batch=16)
    net = fresh_network("ConvNetW32", channels=1, num_classes=4, im_size=(8, 8), seed=0, device="cpu")
    optimizer, streams = make_sgd(net.parameters(), settings, settings.lr), ModelStreams.for_seed(0, torch.device("cpu"))
    idx = torch.randperm(40)[:16]
    assert _recorded(lambda: train_step(net, optimizer, x, y, idx, settings, streams)) == []
