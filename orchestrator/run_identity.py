"""The identity of a run and of its units: exactly the part of the config that shapes the bytes
of the synthetic images on the device that computes them, its hash, and the keys by which two
configs differ (what ``resume`` refuses to change, what a unit from another config is refused
for)."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from orchestrator.config import RunConfig

# Sections that may change between an interrupted run and its resumption: they do not change
# the synthetic images.
MUTABLE_SECTIONS = ("output", "resources", "evaluate", "continual", "nas")
# Keys that change no byte of any unit: names, how often checkpoints are written or the loss is
# read back, whether checkpoints are kept, whether a missing dataset may be fetched.
NEUTRAL_KEYS = ("name", "condense.checkpoint_every", "condense.keep_checkpoints", "condense.loss_every",
                "dataset.download")
# Keys that change bytes on CUDA only: the CPU computes in fp32 and deterministically anyway.
CUDA_ONLY_KEYS = ("precision.tf32", "precision.deterministic", "condense.cuda_graphs")
# Where the dataset lives, never a difference between two identities: the run records the
# dataset's content (run_record.DataContent) and every command that reads it checks that, so a
# dataset moved elsewhere keeps its units and a changed one is named class by class.
LOCATION_KEYS = ("dataset.root",)
Device = str  # "cpu" | "cuda"
DEVICES: tuple[Device, ...] = ("cpu", "cuda")


def unit_device(cfg: RunConfig) -> Device:
    """Where the units of ``cfg`` compute (resources.device, and auto: CUDA with a reserved GPU)."""
    r = cfg.resources
    return "cuda" if r.device == "cuda" or (r.device == "auto" and r.gpus_per_shard > 0) else "cpu"


def identity(cfg: RunConfig | dict[str, Any], device: Device | None = None) -> dict[str, Any]:
    """The part of the config that determines the synthetic images on ``device`` (default: where
    ``cfg`` computes): the pool's settings only when the images come from its networks, no
    neutral key, CUDA's numerics only on CUDA."""
    if isinstance(cfg, RunConfig):
        device = device or unit_device(cfg)
        data = cfg.model_dump(mode="json")
    else:
        data = copy.deepcopy(cfg)
    for key in MUTABLE_SECTIONS:
        data.pop(key, None)
    if data.get("condense", {}).get("networks", "random") == "random":
        data.pop("pool", None)
    for key in NEUTRAL_KEYS + (CUDA_ONLY_KEYS if device != "cuda" else ()):
        _drop(data, key)
    return data


def shard_identity(cfg: RunConfig, device: Device) -> dict[str, Any]:
    """What shapes each shard's bytes on ``device``: the identity less the planned classes, which
    a growing run (class-incremental learning) extends without touching its committed shards."""
    data = identity(cfg, device)
    data.get("plan", {}).pop("classes", None)
    return data


def _drop(data: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.get(part, {})
    data.pop(last, None)


def config_hash(cfg: RunConfig | dict[str, Any]) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shards_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(json.dumps(shard_identity(cfg, unit_device(cfg)), sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()[:16]


def differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, the dataset's location aside
    (LOCATION_KEYS)."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        path = f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            keys.extend(differing_keys(va, vb, path + "."))
        elif va != vb and path not in LOCATION_KEYS:
            keys.append(path)
    return keys
