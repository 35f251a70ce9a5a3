"""`dmcondense bench`: time the grouped DM loop against the per-class reference.

Both loops run in one process on the same random uint8 data and take the same
random draws, so they end on the same images (the run checks it) and their
speed ratio is measured under the same machine load: steps of every
configuration are interleaved, and each rate is the median of its timed steps.
``--estimate gpu`` prints a cost model instead (no measurement).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from workers.devices import Precision, resolve_device
from workers.dm import DMCondenser, DMSettings
from benchmarks.gpu_cost_model import estimate, iteration_flops, print_estimate
from benchmarks.random_data import random_dataset
from benchmarks.reference_dm import ReferenceDM

# Each is one change to the defaults (chunk 32, channels_last on, compile on where a C++ compiler is, bf16 off:
# the "ours" row).
ALL_VARIANTS = "chunk=0,chunk=16,chunk=64,chunk=128,channels_last=off,compile=off,compile=off+channels_last=off,bf16=on"
_ON = {"1", "on", "true", "yes"}
_OFF = {"0", "off", "false", "no"}


# ------------------------------------------------------------------ arguments
def parse_shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"--shape must be three positive integers C,H,W (e.g. 3,32,32), got {text!r}")
    return shape  # type: ignore[return-value]


def _switch(key: str, value: str) -> bool:
    if value.lower() in _ON:
        return True
    if value.lower() in _OFF:
        return False
    raise argparse.ArgumentTypeError(f"variant {key}={value!r}: use on or off")


def variant_settings(base: DMSettings, spec: str) -> DMSettings:
    """``base`` with the overrides of ``spec``: ``key=value`` pairs joined by '+'."""
    s = base
    for item in spec.split("+"):
        key, _, value = item.partition("=")
        if key == "chunk" and value.isdigit():
            s = dataclasses.replace(s, embed_chunk=int(value))
        elif key in ("compile", "cuda_graphs"):
            s = dataclasses.replace(s, **{key: _switch(key, value)})
        elif key in ("channels_last", "bf16", "tf32", "deterministic"):
            s = dataclasses.replace(s, precision=dataclasses.replace(s.precision, **{key: _switch(key, value)}))
        else:
            raise argparse.ArgumentTypeError(
                f"unknown variant {item!r}; use chunk=N, channels_last=on|off, compile=on|off, cuda_graphs=on|off, "
                "bf16=on|off, tf32=on|off or deterministic=on|off, joined by '+' (e.g. chunk=32+compile=on), or 'all'")
    return s


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dmcondense bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=parse_shape, default=(3, 32, 32), help="C,H,W of the images (default 3,32,32)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--model", default="ConvNet")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (compilation happens here)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--variants", default="",
                   help=f"comma-separated overrides of our settings to time as well, or 'all' ({ALL_VARIANTS})")
    p.add_argument("--estimate", choices=["gpu"], help="print the GPU cost model instead of measuring")
    p.add_argument("--efficiency", type=float, default=0.4, help="achievable fraction of GPU peak (estimate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    for name in ("classes", "ipc", "batch_real", "iterations"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or not 0 < args.efficiency <= 1:
        p.error("--warmup must be >= 0 and --efficiency in (0, 1]")
    args.variants = ALL_VARIANTS if args.variants == "all" else args.variants
    for spec in filter(None, args.variants.split(",")):
        try:
            variant_settings(DMSettings(ipc=1, iterations=1), spec)
        except argparse.ArgumentTypeError as e:
            p.error(str(e))
    return args


# ------------------------------------------------------------------ memory
class PeakMemory:
    """Peak memory of one step: allocator peak on CUDA; on the CPU the peak RSS (VmHWM, reset
    through clear_refs) after handing the C heap's free pages back, so that memory freed by
    earlier configurations does not hide this one's allocations."""

    def __init__(self, device: torch.device):
        self.device = device
        self.before: float | None = None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except (OSError, AttributeError):
            pass  # not Linux/glibc: the peak then covers the whole process
        self.before = _proc_status_mb("VmRSS:")

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _proc_status_mb("VmHWM:")

    def record(self, cfg: Timed) -> None:
        cfg.peak_mem_mb = self.peak_mb()
        if cfg.peak_mem_mb is not None and self.before is not None:
            cfg.step_mem_mb = cfg.peak_mem_mb - self.before


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ------------------------------------------------------------------ measurement
@dataclass
class Timed:
    """One configuration under measurement."""

    name: str
    condenser: DMCondenser
    warmup_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    kernel_share: list[float] = field(default_factory=list)  # of each timed step's CPU time
    faults: list[int] = field(default_factory=list)  # page faults of each timed step
    peak_mem_mb: float | None = None  # process peak (CPU) or allocator peak (CUDA) during one step
    step_mem_mb: float | None = None  # that peak minus what was in use just before the step

    @property
    def it_per_s(self) -> float:
        return 1.0 / statistics.median(self.step_s)

    @property
    def best_it_per_s(self) -> float:  # other load only ever slows a step down
        return 1.0 / min(self.step_s)


@dataclass(frozen=True)
class StepCost:
    wall_s: float
    kernel_share: float  # system time / (user + system) of the process over the step
    faults: int  # minor + major page faults over the step


def _timed_step(c: DMCondenser, device: torch.device) -> StepCost:
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    float(c.step())  # the host read waits for the device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    faults = after.ru_minflt - before.ru_minflt + after.ru_majflt - before.ru_majflt
    return StepCost(wall, system / max(user + system, 1e-9), faults)


def measure(configs: list[Timed], warmup: int, iterations: int, device: torch.device,
            log: Callable[[str], None]) -> None:
    """Warm every configuration up, interleave the timed steps, then one untimed step each for memory."""
    for cfg in configs:
        for i in range(warmup):
            cfg.warmup_s.append(_timed_step(cfg.condenser, device).wall_s)
            log(f"{cfg.name}: warm-up {i + 1}/{warmup} {cfg.warmup_s[-1]:.2f} s")
    for i in range(iterations):
        for cfg in configs:
            cost = _timed_step(cfg.condenser, device)
            cfg.step_s.append(cost.wall_s)
            cfg.kernel_share.append(cost.kernel_share)
            cfg.faults.append(cost.faults)
        log(f"round {i + 1}/{iterations}: " + ", ".join(f"{c.name} {c.step_s[-1]:.2f} s" for c in configs))
    probe = PeakMemory(device)
    for cfg in configs:
        probe.reset()
        _timed_step(cfg.condenser, device)
        probe.record(cfg)


def ours_settings(args: argparse.Namespace) -> DMSettings:
    """What a run of paper length condenses with: the config's defaults for this setting, mapped
    by the shard task's own function (resolved per device when the condenser is built)."""
    from orchestrator.config import load_config
    from orchestrator.components.settings import dm_settings

    cfg = load_config(None, [f"condense.ipc={args.ipc}", f"condense.batch_real={args.batch_real}",
                             f"condense.model={args.model}"])
    return dataclasses.replace(dm_settings(cfg), iterations=args.warmup + args.iterations)


def run_benchmark(args: argparse.Namespace, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    real, info = random_dataset(args.shape, args.classes, max(args.batch_real, args.ipc), args.seed)
    classes = list(range(args.classes))
    ours = ours_settings(args)
    plain = dataclasses.replace(ours, precision=Precision(channels_last=False, tf32=ours.precision.tf32),
                                compile=False)  # as published
    specs = [v for v in args.variants.split(",") if v]
    variant_cfgs = {v: variant_settings(ours, v) for v in specs}
    log(f"bench on {device}: shape {args.shape}, {args.classes} classes, ipc {args.ipc}, "
        f"batch {args.batch_real}, {args.model}")
    configs = [Timed("ours", DMCondenser(real, info, classes, ours, args.seed, device)),
               Timed("reference", ReferenceDM(real, info, classes, plain, args.seed, device))]
    configs += [Timed(v, DMCondenser(real, info, classes, s, args.seed, device)) for v, s in variant_cfgs.items()]
    measure(configs, args.warmup, args.iterations, device, log)
    return _result(args, device, ours, configs)


def _diff(a: DMCondenser, b: DMCondenser) -> float:
    return float((a.syn.detach() - b.syn.detach()).abs().max())


def _summary(cfg: Timed, ref: Timed, gflop_per_it: float) -> dict[str, Any]:
    first = cfg.warmup_s[0] if cfg.warmup_s else None
    compiled = cfg.condenser.compile_state.startswith("on") and first is not None
    return {
        "it_per_s": cfg.it_per_s, "best_it_per_s": cfg.best_it_per_s, "gflop_s": gflop_per_it * cfg.it_per_s,
        "speedup": cfg.it_per_s / ref.it_per_s, "speedup_best": cfg.best_it_per_s / ref.best_it_per_s,
        "max_abs_diff_vs_reference": _diff(cfg.condenser, ref.condenser),
        "peak_mem_mb": cfg.peak_mem_mb, "step_mem_mb": cfg.step_mem_mb,
        "first_step_s": first,
        # time in the kernel is mostly zeroing fresh pages: what makes a loop's speed swing
        "kernel_share": statistics.median(cfg.kernel_share), "faults_per_step": statistics.median(cfg.faults),
        "compile_s": max(first - 1 / cfg.it_per_s, 0.0) if compiled else None,
    }


def _result(args: argparse.Namespace, device: torch.device, ours: DMSettings, configs: list[Timed]) -> dict[str, Any]:
    mine, ref, variants = configs[0], configs[1], configs[2:]
    gflop = iteration_flops(args.model, args.shape, args.classes, args.ipc, args.batch_real) / 1e9
    return {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "shape": list(args.shape), "classes": args.classes, "ipc": args.ipc, "batch_real": args.batch_real,
        "model": args.model, "iterations": args.iterations, "warmup": args.warmup,
        "settings": dataclasses.asdict(ours.resolve(device)), "gflop_per_it": gflop,
        **_summary(mine, ref, gflop),
        "reference_it_per_s": ref.it_per_s, "reference_best_it_per_s": ref.best_it_per_s,
        "reference_gflop_s": gflop * ref.it_per_s,
        "reference_peak_mem_mb": ref.peak_mem_mb, "reference_step_mem_mb": ref.step_mem_mb,
        "reference_kernel_share": statistics.median(ref.kernel_share),
        "reference_faults_per_step": statistics.median(ref.faults),
        "variants": {v.name: _summary(v, ref, gflop) for v in variants},
        "method": f"rates from the median (best: the fastest) of {args.iterations} interleaved steps after "
                  f"{args.warmup} warm-up steps; memory over one more step: peak_mem_mb is the process "
                  "peak RSS on CPU (allocator peak on CUDA), step_mem_mb that peak minus the use just "
                  "before the step; kernel % (kernel_share) is the share of a step's process CPU time spent "
                  "in the kernel and faults the page faults of a step (medians): fresh pages to zero",
    }


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(r: dict[str, Any]) -> None:
    print(f"DM iteration, {r['model']} on {'x'.join(map(str, r['shape']))}, {r['classes']} classes, "
          f"ipc {r['ipc']}, real batch {r['batch_real']}/class, {r['device']} ({r['threads']} threads), "
          f"{r['gflop_per_it']:.1f} GFLOP of convolutions and linear layers per iteration")
    ref = {"it_per_s": r["reference_it_per_s"], "gflop_s": r["reference_gflop_s"], "speedup": 1.0, "speedup_best": 1.0,
           "max_abs_diff_vs_reference": 0.0, "peak_mem_mb": r["reference_peak_mem_mb"],
           "step_mem_mb": r["reference_step_mem_mb"], "compile_s": None,
           "kernel_share": r["reference_kernel_share"], "faults_per_step": r["reference_faults_per_step"]}
    rows = [("ours (defaults)", r), ("reference (per class)", ref)]
    rows += [(f"  {name}", v) for name, v in r["variants"].items()]
    print(f"{'configuration':<30}{'s/it':>7}{'it/s':>8}{'GFLOP/s':>8}{'speedup':>9}{'best':>7}{'max|diff|':>10}"
          f"{'peak MB':>9}{'step MB':>9}{'compile s':>10}{'kernel %':>9}{'faults':>9}")
    for name, v in rows:
        print(f"{name:<30}{1 / v['it_per_s']:>7.2f}{v['it_per_s']:>8.3f}{v['gflop_s']:>8.0f}{v['speedup']:>8.2f}x"
              f"{v['speedup_best']:>6.2f}x{v['max_abs_diff_vs_reference']:>10.1e}{_fmt(v['peak_mem_mb'], '.0f'):>9}"
              f"{_fmt(v['step_mem_mb'], '.0f'):>9}{_fmt(v['compile_s'], '.1f'):>10}"
              f"{100 * v['kernel_share']:>9.0f}{v['faults_per_step']:>9.0f}")
    print(f"({r['method']})")


# ------------------------------------------------------------------ entry point
def main(argv: list[str]) -> int:
    args = parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    if args.estimate:
        e = estimate(args.efficiency)
        if args.json:
            print(json.dumps(e))
        else:
            print_estimate(e)
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    try:
        device = resolve_device(args.device)
        result = run_benchmark(args, device, log)
    except (ValueError, RuntimeError) as e:  # bad model name, sizes, or no CUDA: named by the callee
        print(f"dmcondense bench: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0
