"""The identity of a run: the part of its config that shapes the synthetic images, its hash, and
the keys by which two configs differ (what ``resume`` refuses to change)."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from orchestrator.config import RunConfig

# Keys that may change between an interrupted run and its resumption: they do
# not change the synthetic images.
MUTABLE_SECTIONS = ("output", "resources", "evaluate", "continual", "nas")


def identity(cfg: RunConfig | dict[str, Any]) -> dict[str, Any]:
    """The part of the config that determines the synthetic images (the pool's settings only
    when the images come from its networks)."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, RunConfig) else copy.deepcopy(cfg)
    for key in MUTABLE_SECTIONS:
        data.pop(key, None)
    if data.get("condense", {}).get("networks", "random") == "random":
        data.pop("pool", None)
    return data


def config_hash(cfg: RunConfig | dict[str, Any]) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shards_hash(cfg: RunConfig | dict[str, Any]) -> str:
    """What shapes each shard's bytes: the identity less the planned classes, which a growing
    run (class-incremental learning) extends without touching its committed shards."""
    data = identity(cfg)
    data.get("plan", {}).pop("classes", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        path = f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            keys.extend(differing_keys(va, vb, path + "."))
        elif va != vb:
            keys.append(path)
    return keys
