"""Deterministic seed derivation: every random stream comes from (run seed, purpose, ids)."""

from __future__ import annotations

import hashlib

import torch

_MASK_63 = (1 << 63) - 1


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any tuple of ints and strings.

    Stable across processes, Python versions and machines (unlike ``hash``), so a
    shard's stream depends only on what identifies it, never on scheduling.
    """
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK_63


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    return gen
