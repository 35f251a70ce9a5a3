"""Device selection and the precision switches of the GPU path."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from dataclasses import dataclass
from typing import Iterator

import torch


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; anything else is passed to torch."""
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {spec!r} was asked for but CUDA is not available here; "
            "use device: auto or cpu"
        )
    return device


def compute_device(policy: str, reserved_gpu: bool) -> torch.device:
    """Where a task or actor computes: ``policy`` auto (CUDA when a GPU was reserved for it),
    cpu or cuda. A GPU that was asked for but is unusable here is an error naming the host
    and the cause, never a silent CPU fallback (tens of times slower, and other images:
    the device picks the random stream)."""
    if policy == "cpu" or (policy == "auto" and not reserved_gpu):
        return torch.device("cpu")
    problem = cuda_problem()
    if problem:
        raise RuntimeError(
            f"a GPU was reserved for this work on {socket.gethostname()}, but CUDA is unusable there: {problem}. "
            "Install a CUDA build of torch that the node's driver supports, or set resources.gpus_per_shard=0 "
            "(and evaluate.gpus=false) to compute on the CPU"
        )
    return torch.device("cuda")


def cuda_problem_here() -> tuple[str, str]:
    """(this host's name, why CUDA cannot run here or '')."""
    return socket.gethostname(), cuda_problem()


def cuda_problem() -> str:
    """Why CUDA cannot run here ('' when it can)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        torch.cuda.init()
    except Exception as exc:  # noqa: BLE001 - any initialisation failure is the cause to report
        return f"CUDA failed to initialise ({str(exc).splitlines()[0]})"
    if torch.cuda.device_count() == 0:
        return f"no CUDA device is visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
    return ""


def compiler_available() -> bool:
    """torch.compile's CPU and GPU backends build C++ at run time: is a compiler on PATH?"""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def compile_problem(device: torch.device) -> str:
    """Why torch.compile's inductor cannot run on ``device`` here ('' when it can): a C++
    compiler on every device; on CUDA also Triton and a GPU of compute capability 7.0 or more."""
    if not compiler_available():
        return "no C++ compiler on PATH (g++, c++ or clang++)"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton is not installed (inductor generates its GPU kernels with it)"
        major, minor = torch.cuda.get_device_capability(device)
        if major < 7:
            return f"the GPU's compute capability {major}.{minor} is below inductor's 7.0"
    return ""


@dataclass(frozen=True)
class Precision:
    """The numerics of condensation and evaluation alike, one rule on every device:

    - fp32 arithmetic, except that on CUDA fp32 matmuls and convolutions use TF32 tensor
      cores (``tf32``, on by default: 10-bit mantissas in the products, fp32 sums);
    - ``bf16``: autocast of convolutions and matmuls to bfloat16 (norm, ReLU, pooling and
      the images stay fp32);
    - ``deterministic``: on CUDA, deterministic algorithms only (cuDNN's deterministic
      convolutions, no atomics in index_add_ or the sampling backward), so that a resumed
      shard gives the bytes of an uninterrupted one there too; the CPU is deterministic
      anyway.

    The switches are process-global in torch, so ``numerics`` sets them around each step
    and puts the previous values back: two configurations in one process never mix.
    ``channels_last`` picks the NHWC layout (faster convolutions and pooling)."""

    bf16: bool = False
    tf32: bool = True
    channels_last: bool = True
    deterministic: bool = False

    @contextlib.contextmanager
    def numerics(self, device: torch.device) -> Iterator[None]:
        if device.type != "cuda":
            yield
            return
        matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        saved = (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.deterministic, cudnn.benchmark,
                 torch.are_deterministic_algorithms_enabled())
        fp32 = "tf32" if self.tf32 else "ieee"
        matmul.fp32_precision = cudnn.conv.fp32_precision = fp32
        if self.deterministic:
            cudnn.deterministic, cudnn.benchmark = True, False
            torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.deterministic, cudnn.benchmark = saved[:4]
            torch.use_deterministic_algorithms(saved[4])

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        if self.bf16:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


# cuBLAS needs this in the environment before its first use to be deterministic.
DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
