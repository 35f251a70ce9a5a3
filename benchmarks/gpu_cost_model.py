"""The GPU cost model of a DM run: FLOPs and activation bytes of one iteration, counted from the
network, over a GPU's stated peaks. An estimate, never a measurement: every assumption is
printed with the figures (`dmcondense bench --estimate gpu`)."""

from __future__ import annotations

import dataclasses
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


SCENARIOS = (
    Scenario("CIFAR-10 ipc50", (3, 32, 32), "ConvNet", 10, 50, 20_000),
    Scenario("ImageNet-1K ipc10", (3, 64, 64), "ConvNetD4", 1000, 10, 10_000),
    Scenario("ImageNet-1K ipc50", (3, 64, 64), "ConvNetD4", 1000, 50, 10_000),
)
GPU_COUNTS = (8, 64)
SYN_FACTOR = 3.0  # synthetic forward + backward ~ 3x a forward
OVERHEAD_MS = 2.0  # per iteration and GPU: ~200 kernel launches, a few host syncs


def embed_cost(model: str, shape: tuple[int, int, int]) -> tuple[int, int]:
    """(multiply-adds, activation elements read + written) of one image through ``embed``."""
    costs = layer_costs(model, shape)
    return sum(c.macs for c in costs), sum(c.in_elements + c.out_elements for c in costs)


def iteration_flops(model: str, shape: tuple[int, int, int], classes: int, ipc: int, batch_real: int) -> int:
    """FLOPs (2 per multiply-add) of the convolutions and linear layers of one DM iteration on
    ``classes`` classes: the real batch forward, and the synthetic forward plus the backward to
    the images (as many MACs again; DM needs no weight gradients). The floor of an iteration
    on a device is this over the device's peak rate."""
    macs, _ = embed_cost(model, shape)
    return 2 * macs * classes * (batch_real + 2 * ipc)


def estimate_scenario(sc: Scenario, gpu: GPUSpec, efficiency: float) -> dict[str, Any]:
    macs, elems = embed_cost(sc.model, sc.shape)
    images = sc.batch_real + SYN_FACTOR * sc.ipc  # forward-equivalents per class and iteration
    flops = 2 * macs * images
    out: dict[str, Any] = {"scenario": sc.name, "inputs": dataclasses.asdict(sc),
                           "macs_per_image": macs, "flops_per_class_iteration": flops,
                           "flops_per_iteration": flops * sc.classes, "runs": []}
    for precision, tflops, elem_bytes in (("bf16", gpu.bf16_tflops, 2), ("fp32", gpu.fp32_tflops, 4)):
        bytes_ = elems * elem_bytes * images
        t_compute = flops / (tflops * 1e12 * efficiency)
        t_memory = bytes_ / (gpu.hbm_tb_s * 1e12 * efficiency)
        per_class = max(t_compute, t_memory)
        for gpus in GPU_COUNTS:
            used = min(gpus, sc.classes)
            wall = sc.iterations * (math.ceil(sc.classes / used) * per_class + OVERHEAD_MS / 1000)
            out["runs"].append({
                "precision": precision, "gpus": gpus, "gpus_used": used,
                "bytes_per_class_iteration": bytes_, "bound": "compute" if t_compute >= t_memory else "memory",
                "seconds_per_class_iteration": per_class,
                "wall_s": wall, "wall_h": wall / 3600, "gpu_hours": used * wall / 3600,
            })
    return out


def estimate(efficiency: float) -> dict[str, Any]:
    gpu = GPUSpec()
    return {
        "label": "ESTIMATE (cost model, nothing measured)",
        "gpu": dataclasses.asdict(gpu), "efficiency": efficiency,
        "assumptions": [
            f"time per class-iteration = max(FLOPs / (peak x {efficiency:g}), bytes / (HBM x {efficiency:g}))",
            "FLOPs = 2 x conv/linear MACs of embed x (real batch + 3 x ipc): real forward, synthetic "
            "forward and backward",
            "bytes = (input + output elements of every layer) x element size, same image count; "
            "weights and uint8 reads neglected",
            "classes are split evenly over the GPUs in whole classes, each GPU runs its classes as one "
            "grouped loop; GPUs beyond the class count are not used",
            f"plus {OVERHEAD_MS:g} ms per iteration and GPU (kernel launches, host syncs); no data-loading, "
            "checkpoint, evaluation or scheduling time",
            "bf16: activations stored in bf16 (autocast); fp32: no TF32",
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
        print(f"  {s['scenario']}: {i['model']} on {'x'.join(map(str, i['shape']))}, {i['classes']} classes, "
              f"ipc {i['ipc']}, real batch {i['batch_real']}/class, {i['iterations']} iterations, "
              f"{s['macs_per_image'] / 1e6:.1f}M MACs per image")


