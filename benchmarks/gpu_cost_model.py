"""The GPU cost model of a DM run: FLOPs and activation bytes of one iteration, counted from the
network, over a GPU's stated peaks; and of an RDED run (condense.method rded): the teacher's
forwards of every class's crops, their bytes and the host's dispatch of the crop loop. An
estimate, never a measurement: every assumption is printed with the figures
(`dmcondense bench --estimate gpu`)."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

from workers.network_costs import layer_costs


@dataclass(frozen=True)
class GPUSpec:
    name: str = "H100 SXM"
    bf16_tflops: float = 989.0  # dense tensor core
    tf32_tflops: float = 494.7  # dense tensor core
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
    from benchmarks.random_data import random_dataset
    from workers.dm import DMCondenser, DMSettings

    real, info = random_dataset((3, depth_side, depth_side), classes, max(batch_real, ipc), 0)
    settings = DMSettings(ipc=ipc, iterations=2, batch_real=batch_real, model=model, embed_chunk=0, sync_free=True)
    condenser = DMCondenser(real, info, list(range(classes)), settings, 0)
    condenser.step()  # tables made once are not per iteration
    return dispatched_ops(condenser.step)


def dispatched_ops(fn: Callable[[], Any]) -> int:
    """Ops ``fn`` dispatches, views excluded: about one kernel launch each on CUDA."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func._schema.name not in _VIEW_OPS:
                Count.ops += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
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


# ------------------------------------------------------------------ RDED
@dataclass(frozen=True)
class RdedScenario:
    name: str
    shape: tuple[int, int, int]
    teacher: str  # a workers.networks name, or torchvision:<arch>
    classes: int
    ipc: int
    stitch: int
    train_per_class: int  # what a shard reads per class (all its training images)
    candidates: int = 300
    crops: int = 5
    batch: int = 256
    classes_per_shard: int = 10


RDED_SCENARIOS = (  # RDED's scripts: 300 images per class, 5 crops each; factor 1 on CIFAR, 2 on ImageNet
    RdedScenario("CIFAR-10 ipc10", (3, 32, 32), "ConvNet", 10, 10, 1, 5000),
    RdedScenario("ImageNet-1K ipc10", (3, 224, 224), "torchvision:resnet18", 1000, 10, 2, 1281, classes_per_shard=8),
    RdedScenario("ImageNet-1K ipc50", (3, 224, 224), "torchvision:resnet18", 1000, 50, 2, 1281, classes_per_shard=8),
)


def _teacher_network(sc: RdedScenario) -> Any:
    from workers.networks import build_network

    if sc.teacher.startswith("torchvision:"):
        import torchvision.models

        return torchvision.models.get_model(sc.teacher.split(":", 1)[1], weights=None, num_classes=sc.classes)
    return build_network(sc.teacher, sc.shape[0], sc.classes, sc.shape[1:])


@functools.lru_cache(maxsize=8)
def rded_class_costs(sc: RdedScenario) -> dict[str, int]:
    """One class's counts: the teacher's FLOPs per crop (each crop padded to the image size, as
    RDED scores it), its activation bytes per crop, its weights, and the ops dispatched per crop
    (cut and resized one by one) and per teacher batch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from workers.rded import cut_crops
    from workers.teachers import inference_memory

    net = _teacher_network(sc).eval()
    x = torch.zeros(1, *sc.shape)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    memory = inference_memory(net, sc.shape)
    image = torch.zeros(1, *sc.shape, dtype=torch.uint8)
    boxes = torch.tensor([[0, 0, sc.shape[1] // 2]] * 4)
    side = (sc.shape[1] // sc.stitch, sc.shape[2] // sc.stitch)
    crop_ops = dispatched_ops(lambda: cut_crops(image, boxes, 4, side, (0.5,) * 3, (0.25,) * 3)) / 4
    with torch.no_grad():
        batch_ops = dispatched_ops(lambda: net(torch.zeros(2, *sc.shape)))
    return {"flops_per_crop": counter.get_total_flops(), "bytes_per_crop": 2 * memory.per_image,
            "teacher_weights": memory.weights, "ops_per_crop": math.ceil(crop_ops), "ops_per_batch": batch_ops}


def estimate_rded(sc: RdedScenario, gpu: GPUSpec, efficiency: float) -> dict[str, Any]:
    from workers.rded import RdedSettings, class_bytes

    costs = rded_class_costs(sc)
    n = sc.candidates * sc.crops  # crops scored per class
    flops, bytes_ = costs["flops_per_crop"] * n, costs["bytes_per_crop"] * n
    host_s = (costs["ops_per_crop"] * n + costs["ops_per_batch"] * math.ceil(n / sc.batch)) * HOST_US_PER_OP / 1e6
    settings = RdedSettings(ipc=sc.ipc, stitch=sc.stitch, crops=sc.crops, candidates=sc.candidates, batch=sc.batch)
    memory = (costs["teacher_weights"] + sc.batch * costs["bytes_per_crop"] // 2
              + class_bytes(settings, sc.shape[0], sc.shape[1:]))
    shards = math.ceil(sc.classes / sc.classes_per_shard)
    read = sc.classes_per_shard * sc.train_per_class * math.prod(sc.shape)
    out: dict[str, Any] = {"scenario": sc.name, "inputs": dataclasses.asdict(sc), **costs, "flops_per_class": flops,
                           "bytes_per_class": bytes_, "host_seconds_per_class": host_s, "shards": shards,
                           "gpu_memory_per_task_bytes": memory, "bytes_read_per_shard": read, "runs": []}
    for precision, tflops in (("tf32", gpu.tf32_tflops), ("fp32", gpu.fp32_tflops)):
        t_compute = flops / (tflops * 1e12 * efficiency)
        t_memory = bytes_ / (gpu.hbm_tb_s * 1e12 * efficiency)
        per_class = max(t_compute, t_memory, host_s)
        bound = "compute" if per_class == t_compute else "memory" if per_class == t_memory else "launch"
        for gpus in GPU_COUNTS:
            used = min(gpus, shards)
            wall = math.ceil(shards / used) * sc.classes_per_shard * per_class
            out["runs"].append({"precision": precision, "gpus": gpus, "gpus_used": used, "bound": bound,
                                "seconds_per_class": per_class, "wall_s": wall, "gpu_hours": used * wall / 3600})
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
        "rded_assumptions": [
            "per class: candidates x crops teacher forwards of crops zero-padded to the image size (RDED's scoring); "
            "FLOPs counted by torch's FlopCounterMode on the teacher, bytes = 2 x its activations per image",
            "host dispatch: each crop is cut and resized alone (ops counted on the CPU), plus one teacher forward's "
            f"ops per batch, at {HOST_US_PER_OP:g} us each",
            "the GPU memory of a task: the teacher's weights and a batch's activations, one class's drawn images "
            "and crops; tf32 is the default (precision.tf32), fp32 without it",
            "not charged: reading the shard's training images (bytes_read_per_shard, every image of its classes, "
            "uint8), the teacher's load, the commit",
        ],
        "rded": [estimate_rded(sc, gpu, efficiency) for sc in RDED_SCENARIOS],
    }


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
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
    print("RDED (condense.method rded):")
    for a in e["rded_assumptions"]:
        print(f"  - {a}")
    print(f"{'scenario':<20}{'TFLOP/cls':>10}{'prec':>6}{'GPUs':>6}{'used':>6}{'bound':>9}{'wall':>10}{'GPU-h':>9}")
    for sc in e["rded"]:
        for r in sc["runs"]:
            print(f"{sc['scenario']:<20}{sc['flops_per_class'] / 1e12:>10.3g}{r['precision']:>6}{r['gpus']:>6}"
                  f"{r['gpus_used']:>6}{r['bound']:>9}{_duration(r['wall_s']):>10}{r['gpu_hours']:>9.3g}")
    for sc in e["rded"]:
        i = sc["inputs"]
        print(f"  RDED {sc['scenario']}: teacher {i['teacher']} on {'x'.join(map(str, i['shape']))}, "
              f"{i['candidates']} images x {i['crops']} crops per class, stitch {i['stitch']}, {sc['shards']} shards "
              f"of {i['classes_per_shard']} classes; {sc['flops_per_crop'] / 1e9:.2f} GFLOP per crop; a task holds "
              f"{sc['gpu_memory_per_task_bytes'] / 2**30:.2f} GiB on the GPU and reads "
              f"{sc['bytes_read_per_shard'] / 2**30:.2f} GiB of training images")
    for s in e["scenarios"]:
        i = s["inputs"]
        print(f"  {s['scenario']}: {i['model']} on {'x'.join(map(str, i['shape']))}, {i['classes']} classes in "
              f"{s['shards']} shards of {i['classes_per_shard']}, ipc {i['ipc']}, real batch {i['batch_real']}/class, "
              f"{i['iterations']} iterations, {s['macs_per_image'] / 1e6:.1f}M MACs per image, "
              f"{s['kernels_per_shard_iteration']} ops per shard-iteration")


