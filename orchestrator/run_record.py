"""The run record (RUN/run.json): one typed model of what a run is.

The config, the plan as typed shard specs, the dataset's info (classes, per-class
counts, mean/std) and the versions that made it. The driver builds it once and
hands it to every task and actor as it is: nothing re-parses run.json by hand, and
no task re-opens a dataset to learn its statistics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import subprocess
from pathlib import Path
from importlib.metadata import version
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from orchestrator.config import DatasetConfig, RunConfig
from orchestrator.run_identity import config_hash
from orchestrator.secrets import redacted_config, restore
from orchestrator.plan import ShardSpec
from workers.data import class_fingerprints
from workers.data.fingerprint import images_in
from workers.data.types import DatasetInfo

FORMAT = 2
RunKind = Literal["run", "continual"]  # a continual run grows step by step; the two never share a directory


class Versions(BaseModel):
    model_config = ConfigDict(frozen=True)

    dmcondense: str
    torch: str
    ray: str
    pyarrow: str
    python: str
    commit: str | None = None  # the project's git commit, where it runs from a checkout

    @classmethod
    def current(cls) -> "Versions":
        return cls(**{name: version(name) for name in ("dmcondense", "torch", "ray", "pyarrow")},
                   python=platform.python_version(), commit=_git_commit())


def _git_commit() -> str | None:
    """The commit of the checkout this package runs from (None when installed from elsewhere)."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out + ("-dirty" if dirty else "")


class DataContent(BaseModel):
    """The train split's content, class by class (workers.data.fingerprint): what a run's units
    were computed from, checked by every command that reads the dataset again."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    classes: tuple[str, ...]  # per class id: "<images>:<hash of what identifies them>"

    @classmethod
    def of(cls, dataset: DatasetConfig) -> "DataContent":
        return cls(classes=tuple(class_fingerprints(dataset.name, dataset.root, resolution=dataset.resolution)))

    def changed(self, now: "DataContent", class_ids: tuple[int, ...] | list[int]) -> list[int]:
        """The classes among ``class_ids`` whose content is not the same ``now`` (or is gone)."""
        return [c for c in class_ids if c >= len(now.classes) or now.classes[c] != self.classes[c]]

    def key(self, class_ids: list[int]) -> str:
        """A hash of these classes' content."""
        return hashlib.sha256("\n".join(self.classes[c] for c in class_ids).encode()).hexdigest()[:16]


class RunRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[2] = FORMAT
    config: RunConfig
    config_hash: str
    shards: tuple[ShardSpec, ...]
    dataset: DatasetInfo
    versions: Versions
    kind: RunKind = "run"
    data: DataContent | None = None  # None: recorded before the content was (resumes from its own root only)
    # Classes whose images changed and whose shards are to be condensed again (resume
    # --recompute-changed): their units are dropped under the lease before any stage runs.
    stale: tuple[int, ...] = ()
    # Set once shards were condensed again from changed images: the content they came from, part
    # of every training set's identity (``units_key``), so that no score of the earlier data is reused.
    content_key: str | None = None

    @classmethod
    def build(cls, cfg: RunConfig, shards: list[ShardSpec], info: DatasetInfo, kind: RunKind = "run",
              data: DataContent | None = None) -> "RunRecord":
        return cls(config=cfg, config_hash=config_hash(cfg), shards=tuple(shards), dataset=info,
                   versions=Versions.current(), kind=kind, data=data)

    def dump(self) -> dict[str, Any]:
        """run.json's content: the worker environment's values as fingerprints (orchestrator.secrets)."""
        data = self.model_dump(mode="json")
        return {**data, "config": redacted_config(data["config"])}

    @staticmethod
    def restored(data: dict[str, Any]) -> dict[str, Any]:
        """run.json's content with each fingerprint taken back from this process's environment, and
        an evaluation recorded before its protocol's values became null's meaning read as it ran."""
        data = _protocol_values_as_run(data)
        resources = (data.get("config") or {}).get("resources") or {}
        if not resources.get("worker_env"):
            return data
        env = restore(resources["worker_env"])
        return {**data, "config": {**data["config"], "resources": {**resources, "worker_env": env}}}

    def with_config(self, cfg: RunConfig) -> "RunRecord":
        """The same run under settings that do not change its images (resources, evaluation)."""
        return self.model_copy(update={"config": cfg})

    @property
    def classes(self) -> list[int]:
        return [c for s in self.shards for c in s.class_ids]

    @property
    def units_key(self) -> str:
        """The identity of what the run's units were computed from: its config's hash, and the
        dataset's content once some were computed again from changed images."""
        return self.config_hash if self.content_key is None else f"{self.config_hash}-{self.content_key}"

    def recomputing(self, changed: list[int], now: DataContent) -> "RunRecord":
        """This run with the ``changed`` classes' shards to be condensed again from the content
        ``now``: their image counts as they are now; the mean and std stay as recorded, which the
        other shards were normalised with."""
        counts = list(self.dataset.train_counts)
        for c in changed:
            counts[c] = images_in(now.classes[c])
        return self.model_copy(update={
            "data": now, "dataset": dataclasses.replace(self.dataset, train_counts=tuple(counts)),
            "stale": tuple(sorted({*self.stale, *changed})), "content_key": now.key(self.classes)})

    def carried(self, old: "RunRecord") -> "RunRecord":
        """This new record over ``old``'s directory with what it must keep of it: the mean and std
        its units were normalised with, the classes still to recompute, the content key."""
        info = dataclasses.replace(self.dataset, mean=old.dataset.mean, std=old.dataset.std)
        return self.model_copy(update={"dataset": info, "stale": old.stale, "content_key": old.content_key})


def upgrade(data: dict[str, Any], info: DatasetInfo) -> dict[str, Any]:
    """A format-1 run.json (dmcondense 0.1: an untyped plan, no per-class counts) in this
    format; ``info`` is the dataset as opened now, whose statistics must be the record's."""
    old = data["dataset"]
    if [round(v, 6) for v in old["mean"] + old["std"]] != [round(v, 6) for v in (*info.mean, *info.std)]:
        raise ValueError(f"the dataset at {data['config']['dataset']} is not the one this run was made from "
                         "(its mean/std differ)")
    config = {**data["config"], "resources": dict(data["config"].get("resources", {})),
              "condense": dict(data["config"].get("condense", {}))}
    if "retry_exceptions" in config["resources"]:  # was a count of retries, is a switch
        config["resources"]["retry_exceptions"] = bool(config["resources"]["retry_exceptions"])
    if "tf32" in config["condense"]:  # one precision rule for condensation and evaluation now
        config["precision"] = {"tf32": config["condense"].pop("tf32")}
    return {"format": FORMAT, "config": config, "config_hash": data["config_hash"],
            "shards": data["plan"]["shards"], "dataset": info, "versions": data["versions"]}


_PAPER_DEFAULTS = {"labels": "hard", "temperature": 1.2, "lr": 0.01, "epochs": 1000}  # before null meant the protocol's


def _protocol_values_as_run(data: dict[str, Any]) -> dict[str, Any]:
    """Records of rded or ddranking evaluations made while evaluate.temperature, lr and epochs at
    the paper's defaults took the protocol's values (and labels were stored soft): those keys are
    read as null, the protocol's, as they ran. A record of this version holds a null among them."""
    e = (data.get("config") or {}).get("evaluate") or {}
    if e.get("protocol", "paper") == "paper" or any(e.get(k, 0) is None for k in _PAPER_DEFAULTS):
        return data
    upgraded = {**e, **{k: None for k, v in _PAPER_DEFAULTS.items() if e.get(k) == v or k == "labels"}}
    return {**data, "config": {**data["config"], "evaluate": upgraded}}
