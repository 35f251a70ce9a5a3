"""The CPU's peak arithmetic rate, and the floor it puts under one DM iteration.

Compiles a loop of independent fused multiply-adds with the system C compiler
(the one torch.compile uses), runs it on one thread and on torch's thread
count, and prints GFLOP/s in fp32 (AVX-512 where the CPU has it, and AVX2)
and, where the CPU has avx512_bf16, in bf16 dot products. Then, for the
settings of `dmcondense bench`, the GFLOP of one iteration (convolutions and
linear layers, ``benchmarks.gpu_cost_model.iteration_flops``) over the best fp32 peak: the
time no fp32 loop can beat, and, given the reference's measured time, the
largest speed-up any fp32 loop could show against it.

    .venv/bin/python benchmarks/cpu_peak.py [--shape 3,32,32 --classes 10 --ipc 10 --batch-real 256]
                                            [--reference-s 4.19]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from benchmarks.dm_loop import parse_shape
from benchmarks.gpu_cost_model import iteration_flops

# 12 independent accumulators cover the FMA latency x throughput of current x86 cores.
_SOURCE = r"""
#include <immintrin.h>
#include <omp.h>

#define CHAINS 12  /* unrolled below, so the accumulators stay in registers */

__attribute__((target("avx512f"))) static float run512(long iters) {
    __m512 a[CHAINS], b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
    for (int j = 0; j < CHAINS; j++) a[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
        _Pragma("GCC unroll 12") for (int j = 0; j < CHAINS; j++) a[j] = _mm512_fmadd_ps(a[j], b, c);
    for (int j = 1; j < CHAINS; j++) a[0] = _mm512_add_ps(a[0], a[j]);
    return _mm512_reduce_add_ps(a[0]);
}

__attribute__((target("avx2,fma"))) static float run256(long iters) {
    __m256 a[CHAINS], b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
    for (int j = 0; j < CHAINS; j++) a[j] = _mm256_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
        _Pragma("GCC unroll 12") for (int j = 0; j < CHAINS; j++) a[j] = _mm256_fmadd_ps(a[j], b, c);
    float out[8];
    for (int j = 1; j < CHAINS; j++) a[0] = _mm256_add_ps(a[0], a[j]);
    _mm256_storeu_ps(out, a[0]);
    return out[0] + out[7];
}

__attribute__((target("avx512f,avx512bf16"))) static float run_bf16(long iters) {
    __m512 a[CHAINS];
    __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3380);
    for (int j = 0; j < CHAINS; j++) a[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
        _Pragma("GCC unroll 12") for (int j = 0; j < CHAINS; j++) a[j] = _mm512_dpbf16_ps(a[j], b, c);
    for (int j = 1; j < CHAINS; j++) a[0] = _mm512_add_ps(a[0], a[j]);
    return _mm512_reduce_add_ps(a[0]);
}

/* kind 0: fp32 AVX-512, 1: fp32 AVX2, 2: bf16 dot products. Returns the seconds taken;
   every thread runs ``iters`` iterations of CHAINS vector instructions. */
double run(int kind, int threads, long iters) {
    volatile float sink = 0;
    double start = omp_get_wtime();
    #pragma omp parallel num_threads(threads)
    {
        float r = kind == 0 ? run512(iters) : kind == 1 ? run256(iters) : run_bf16(iters);
        #pragma omp atomic
        sink += r;
    }
    return omp_get_wtime() - start;
}
"""
# FLOPs of one instruction: 16 (or 8) fp32 lanes x 2, or 16 lanes x 2 bf16 products x 2.
_FLOPS_PER_OP = {0: 32, 1: 16, 2: 64}
_NAMES = {0: "fp32 (AVX-512 FMA)", 1: "fp32 (AVX2 FMA)", 2: "bf16 (AVX-512 dot products)"}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def build_probe(workdir: Path) -> ctypes.CDLL:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("cpu_peak: no C compiler (cc or gcc) on PATH; install one (torch.compile needs it too)")
    src, lib = workdir / "peak.c", workdir / "peak.so"
    src.write_text(_SOURCE)
    subprocess.run([cc, "-O2", "-fopenmp", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    probe = ctypes.CDLL(str(lib))
    probe.run.restype = ctypes.c_double
    probe.run.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
    return probe


def peak_gflops(probe: ctypes.CDLL, kind: int, threads: int, seconds: float = 0.5, repeats: int = 3) -> float:
    """Best of ``repeats`` runs of about ``seconds`` each (other load only slows a run down)."""
    iters = 1_000_000
    while (took := probe.run(kind, threads, iters)) < seconds / 4:
        iters *= 4
    iters = int(iters * seconds / took)
    best = min(probe.run(kind, threads, iters) for _ in range(repeats))
    return threads * iters * 12 * _FLOPS_PER_OP[kind] / best / 1e9


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=parse_shape, default=(3, 32, 32))
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--model", default="ConvNet")
    p.add_argument("--reference-s", type=float, help="the reference's measured s/it (from dmcondense bench)")
    p.add_argument("--seconds", type=float, default=0.5, help="length of one timed run of the probe")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    flags, threads = cpu_flags(), torch.get_num_threads()
    kinds = ([0] if "avx512f" in flags else []) + [1] + ([2] if "avx512_bf16" in flags else [])
    with tempfile.TemporaryDirectory() as tmp:
        probe = build_probe(Path(tmp))
        peaks = {_NAMES[k]: {str(t): peak_gflops(probe, k, t, args.seconds) for t in sorted({1, threads})}
                 for k in kinds}
    fp32_peak = max(peaks[_NAMES[k]][str(threads)] for k in kinds if k != 2)
    gflop = iteration_flops(args.model, args.shape, args.classes, args.ipc, args.batch_real) / 1e9
    result = {"threads": threads, "peak_gflop_s": peaks, "gflop_per_it": gflop, "fp32_floor_s": gflop / fp32_peak,
              "settings": {"model": args.model, "shape": list(args.shape), "classes": args.classes,
                           "ipc": args.ipc, "batch_real": args.batch_real}}
    if args.reference_s:
        result["reference_s"] = args.reference_s
        result["max_fp32_speedup"] = args.reference_s / result["fp32_floor_s"]
    if args.json:
        print(json.dumps(result))
        return
    for name, by_threads in peaks.items():
        print(f"peak {name}: " + ", ".join(f"{v:.0f} GFLOP/s on {t} thread(s)" for t, v in by_threads.items()))
    print(f"one DM iteration ({args.model}, {'x'.join(map(str, args.shape))}, {args.classes} classes, "
          f"ipc {args.ipc}, real batch {args.batch_real}): {gflop:.1f} GFLOP -> no fp32 loop beats "
          f"{result['fp32_floor_s']:.2f} s/it on {threads} thread(s)")
    if args.reference_s:
        print(f"against a reference at {args.reference_s:.2f} s/it, the largest possible fp32 speed-up is "
              f"{result['max_fp32_speedup']:.2f}x")


if __name__ == "__main__":
    main()
