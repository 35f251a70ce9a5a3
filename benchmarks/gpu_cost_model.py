"""The GPU cost model of a DM run: FLOPs and activation bytes of one iteration, counted from the
network, over a GPU's stated peaks. An estimate, never a measurement: every assumption is
printed with the figures (`dmcondense bench --estimate gpu`)."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

from workers.network_costs import layer_costs


@dataclass(frozen=True)
class GPUSpec:
    name: str = "H100 SXM"
    bf16_tflops: float = 989.0  # dense tensor core
    fp32_tflops: float = 67.0  # non-tensor-core FP32
    hbm_tb_s: float = 3.35  # HBM3


@dataclass(frozen=True)
class Scenario:
    name: str
    shape: tuple[int, int, int]
    model: str
    classes: int
    ipc: int
    iterations: int
    batch_real: int = 256
    classes_per_shard: int = 10


SCENARIOS = (
    Scenario("CIFAR-10 ipc50", (3, 32, 32), "ConvNet", 10, 50, 20_000, classes_per_shard=10),
    Scenario("ImageNet-1K ipc10", (3, 64, 64), "ConvNetD4", 1000, 10, 10_000, classes_per_shard=8),
    Scenario("ImageNet-1K ipc50", (3, 64, 64), "ConvNetD4", 1000, 50, 10_000, classes_per_shard=8),
)
GPU_COUNTS = (8, 64)
SYN_FACTOR = 3.0  # synthetic forward + backward ~ 3x a forward
# Assumed: what the host spends per dispatched op in PyTorch eager (Python, dispatcher,
# launch), which bounds an iteration from below when the GPU finishes its kernels sooner.
HOST_US_PER_OP = 10.0
_VIEW_OPS = ("aten::view", "aten::_unsafe_view", "aten::expand", "aten::slice", "aten::select", "aten::permute",
             "aten::t", "aten::transpose", "aten::unsqueeze", "aten::squeeze", "aten::as_strided", "aten::detach",
             "aten::alias", "aten::split", "aten::unbind", "aten::narrow", "aten::split_with_sizes")


def embed_cost(model: str, shape: tuple[int, int, int]) -> tuple[int, int]:
    """(multiply-adds, activation elements read + written) of one image through ``embed``."""
    costs = layer_costs(model, shape)
    return sum(c.macs for c in costs), sum(c.in_elements + c.out_elements for c in costs)


def embed_bytes(model: str, shape: tuple[int, int, int], bf16: bool) -> int:
    """Activation bytes one image reads and writes through ``embed``: under bf16 autocast the
    convolutions and linear layers write bf16 (2 bytes), while norm, ReLU and pooling stay
    fp32 (4 bytes), as the loop runs; in fp32 every layer moves 4 bytes per element."""
    total = 0
    for c in layer_costs(model, shape):
        out = 2 if bf16 and c.kind in ("conv", "linear") else 4
        total += c.in_elements * 4 + c.out_elements * out  # reads at the producer's width, rounded up
    return total


def iteration_flops(model: str, shape: tuple[int, int, int], classes: int, ipc: int, batch_real: int) -> int:
    """FLOPs (2 per multiply-add) of the convolutions and linear layers of one DM iteration on
    ``classes`` classes: the real batch forward, and the synthetic forward plus the backward to
    the images (as many MACs again; DM needs no weight gradients). The floor of an iteration
    on a device is this over the device's peak rate."""
    macs, _ = embed_cost(model, shape)
    return 2 * macs * classes * (batch_real + 2 * ipc)


@functools.lru_cache(maxsize=16)
def kernels_per_iteration(model: str, depth_side: int, classes: int, ipc: int, batch_real: int) -> int:
    """Ops one DM iteration dispatches on the path CUDA runs (one pass, no host synchronisation,
    eager), views excluded: about one kernel launch each. Counted on the CPU, on random images
    of side ``depth_side`` (the smallest the model's depth takes: the count does not depend on
    the image size, only on the network, the classes and the batch)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from benchmarks.random_data import random_dataset
    from workers.dm import DMCondenser, DMSettings

    real, info = random_dataset((3, depth_side, depth_side), classes, max(batch_real, ipc), 0)
    settings = DMSettings(ipc=ipc, iterations=2, batch_real=batch_real, model=model, embed_chunk=0, sync_free=True)
    condenser = DMCondenser(real, info, list(range(classes)), settings, 0)
    condenser.step()  # tables made once are not per iteration

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func._schema.name not in _VIEW_OPS:
                Count.ops += 1
            return func(*args, **(kwargs or {}))

    with Count():
        condenser.step()
    return Count.ops


def _depth_side(model: str, shape: tuple[int, int, int]) -> int:
    """The smallest side the model takes with the depth it has at ``shape`` (ConvNetD4 at 64)."""
    return 16 if shape[1] > 32 else 8


def estimate_scenario(sc: Scenario, gpu: GPUSpec, efficiency: float) -> dict[str, Any]:
    macs, _ = embed_cost(sc.model, sc.shape)
    k = sc.classes_per_shard
    images = sc.batch_real + SYN_FACTOR * sc.ipc  # forward-equivalents per class and iteration
    flops = 2 * macs * images * k  # one shard-iteration
    kernels = kernels_per_iteration(sc.model, _depth_side(sc.model, sc.shape), k, sc.ipc, sc.batch_real)
    host_s = kernels * HOST_US_PER_OP / 1e6
    shards = math.ceil(sc.classes / k)
    out: dict[str, Any] = {"scenario": sc.name, "inputs": dataclasses.asdict(sc), "macs_per_image": macs,
                           "flops_per_class_iteration": flops / k, "flops_per_iteration": flops / k * sc.classes,
                           "kernels_per_shard_iteration": kernels, "shards": shards, "runs": []}
    for precision, tflops in (("bf16", gpu.bf16_tflops), ("fp32", gpu.fp32_tflops)):
        bytes_ = embed_bytes(sc.model, sc.shape, precision == "bf16") * images * k
        t_compute = flops / (tflops * 1e12 * efficiency)
        t_memory = bytes_ / (gpu.hbm_tb_s * 1e12 * efficiency)
        per_it = max(t_compute, t_memory, host_s)
        bound = "compute" if per_it == t_compute else "memory" if per_it == t_memory else "launch"
        for gpus in GPU_COUNTS:
            used = min(gpus, shards)
            wall = math.ceil(shards / used) * sc.iterations * per_it
            out["runs"].append({
                "precision": precision, "gpus": gpus, "gpus_used": used, "bytes_per_shard_iteration": bytes_,
                "bound": bound, "seconds_per_shard_iteration": per_it, "host_seconds_per_shard_iteration": host_s,
                "wall_s": wall, "wall_h": wall / 3600, "gpu_hours": used * wall / 3600,
            })
    return out


def estimate(efficiency: float) -> dict[str, Any]:
    gpu = GPUSpec()
    return {
        "label": "ESTIMATE (cost model, nothing measured)",
        "gpu": dataclasses.asdict(gpu), "efficiency": efficiency,
        "assumptions": [
            f"time per shard-iteration = max(FLOPs / (peak x {efficiency:g}), bytes / (HBM x {efficiency:g}), "
            f"ops x {HOST_US_PER_OP:g} us of host dispatch)",
            "FLOPs = 2 x conv/linear MACs of embed x (real batch + 3 x ipc) x classes of the shard: real forward, "
            "synthetic forward and backward",
            "bytes = input + output elements of every layer, conv/linear outputs 2 bytes under bf16 autocast, "
            "everything else 4 bytes; weights and uint8 reads neglected",
            "ops = the dispatched ops of one iteration on the CUDA path (one pass, no host synchronisation, eager), "
            "counted on the CPU with the loop itself, views excluded; a compiled embedding fuses some of them",
            f"host dispatch of {HOST_US_PER_OP:g} us per op is assumed, not measured (PyTorch eager on a server CPU)",
            "shards (the configs' plan.classes_per_shard) run in waves over the GPUs, one shard per GPU at a time; "
            "no data loading, checkpoint, evaluation or scheduling time",
            "bf16: autocast of convolutions and matmuls; fp32: no TF32 (TF32, on by default, sits between the two)",
        ],
        "scenarios": [estimate_scenario(sc, gpu, efficiency) for sc in SCENARIOS],
    }


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def print_estimate(e: dict[str, Any]) -> None:
    g = e["gpu"]
    print(f"{e['label']}: {g['name']}, bf16 {g['bf16_tflops']:g} TFLOP/s dense, fp32 {g['fp32_tflops']:g} "
          f"TFLOP/s, HBM {g['hbm_tb_s']:g} TB/s, achievable fraction {e['efficiency']:g}")
    for a in e["assumptions"]:
        print(f"  - {a}")
    print(f"{'scenario':<20}{'TFLOP/it':>9}{'prec':>6}{'GPUs':>6}{'used':>6}{'bound':>9}{'wall':>10}{'GPU-h':>9}")
    for sc in e["scenarios"]:
        tflop = sc["flops_per_iteration"] / 1e12
        for r in sc["runs"]:
            print(f"{sc['scenario']:<20}{tflop:>9.3g}{r['precision']:>6}{r['gpus']:>6}{r['gpus_used']:>6}"
                  f"{r['bound']:>9}{_duration(r['wall_s']):>10}{r['gpu_hours']:>9.3g}")
    for s in e["scenarios"]:
        i = s["inputs"]
        print(f"  {s['scenario']}: {i['model']} on {'x'.join(map(str, i['shape']))}, {i['classes']} classes in "
              f"{s['shards']} shards of {i['classes_per_shard']}, ipc {i['ipc']}, real batch {i['batch_real']}/class, "
              f"{i['iterations']} iterations, {s['macs_per_image'] / 1e6:.1f}M MACs per image, "
              f"{s['kernels_per_shard_iteration']} ops per shard-iteration")


