"""Device selection and the precision switches of the GPU path."""

from __future__ import annotations

import contextlib
import shutil
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


def compiler_available() -> bool:
    """torch.compile's CPU and GPU backends build C++ at run time: is a compiler on PATH?"""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


@dataclass(frozen=True)
class Precision:
    """Numerics and layout switches: fp32 everywhere by default (bf16 and TF32 are opt-in),
    NHWC activations by default (faster convolutions and pooling on CPU and GPU)."""

    bf16: bool = False  # autocast matmuls/convs to bfloat16
    tf32: bool = False  # TF32 tensor cores for fp32 matmuls (CUDA only)
    channels_last: bool = True  # NHWC memory format for convolutions

    def apply_global(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        if self.bf16:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format
