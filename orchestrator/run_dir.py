"""The run handle: a run directory (local path or pyarrow.fs URI) with its typed record.

It owns loading and saving RUN/run.json and every path of the run directory's
layout (DESIGN.md, "The run directory"); stages, tasks and actors receive it as it
is and ask it for paths, never build them by hand.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import ValidationError

from orchestrator import commands, storage
from orchestrator.errors import DamagedRecord, RunError
from workers.data.uri import absolute
from orchestrator.run_record import RunRecord, upgrade

if TYPE_CHECKING:
    from orchestrator.config import RunConfig
    from orchestrator.plan import ShardSpec
    from orchestrator.resolved import Resolved
    from workers.data.types import DatasetInfo


# What to do about a damaged run.json: its units are intact and keep their own identities.
_RECORD_FIX = ("the committed units are untouched: start the run again over them with `dmcondense run CONFIG --out "
               "RUN` (its own config; units of another config are refused), or give a new run its own --out")


@dataclass(frozen=True)
class RunDir:
    uri: str  # absolute: tasks and actors run in other directories, on other nodes
    record: RunRecord
    resolution: Resolved | None = field(default=None, compare=False)  # set where the run is opened

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", absolute(self.uri))

    # ------------------------------------------------------------ record
    @staticmethod
    def exists(uri: str) -> bool:
        return storage.exists(storage.join(uri, "run.json"))

    @classmethod
    def load(cls, uri: str) -> "RunDir":
        path = storage.join(uri, "run.json")
        if not storage.exists(path):
            raise RunError(f"{uri} is not a run directory (no run.json); start one with `{commands.new_run(uri)}`")
        try:
            data = storage.read_json(path)
        except ValueError as exc:  # truncated, or not JSON at all
            raise DamagedRecord(f"{path} is not readable JSON ({str(exc).splitlines()[0]}); {_RECORD_FIX}") from None
        if not isinstance(data, dict) or not data:
            raise DamagedRecord(f"{path} holds no run record; {_RECORD_FIX}")
        if "format" not in data and "config" in data:  # written by dmcondense 0.1
            data = upgrade(data, _open_info(data["config"]))
        data = RunRecord.restored(data)
        try:
            return cls(uri, RunRecord.model_validate(data))
        except ValidationError as exc:
            raise DamagedRecord(f"{path} is not a run record this version reads: {exc.errors()[0]['msg']} "
                           f"at {'.'.join(map(str, exc.errors()[0]['loc']))}; {_RECORD_FIX}") from None

    def save(self) -> None:
        """Write RUN/run.json (the directory made first); an unwritable location is bad input."""
        try:
            storage.ensure_dir(self.uri)
            storage.write_json_atomic(self.path("run.json"), self.record.dump())
        except OSError as exc:
            raise RunError(f"cannot write the run directory {self.uri} ({str(exc).splitlines()[0]}); choose a "
                           "writable location with --out") from None

    def refuse_other_kind(self, kind: str) -> None:
        """A plain run and a continual run never share a directory."""
        names = {"run": "a plain run (dmcondense run)", "continual": "a continual run (dmcondense continual)"}
        if self.record.kind != kind:
            raise RunError(f"{self.uri} holds {names[self.record.kind]}; {names[kind]} needs a directory of its "
                           "own: pass another --out")

    def with_config(self, cfg: RunConfig) -> "RunDir":
        """The run under other settings, unresolved (orchestrator.run_opening resolves it)."""
        return RunDir(self.uri, self.record.with_config(cfg))

    @property
    def resolved(self) -> Resolved:
        """Its pool, teachers and evaluation plan, resolved once where it was opened."""
        if self.resolution is None:
            raise RunError(f"the handle of {self.uri} was not opened through orchestrator.run_opening, which "
                           "resolves its pool, teachers and evaluation plan")
        return self.resolution

    @property
    def config(self) -> RunConfig:
        return self.record.config

    @property
    def shards(self) -> tuple[ShardSpec, ...]:
        return self.record.shards

    @property
    def dataset(self) -> DatasetInfo:
        return self.record.dataset

    # ------------------------------------------------------------ layout
    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def relative(self, path: str) -> str:
        return storage.relative(self.uri, path)

    def shard_file(self, spec: ShardSpec) -> str:
        return self.path("shards", f"{spec.name}.parquet")

    def manifest(self, spec: ShardSpec) -> str:
        return self.path("manifest", f"{spec.name}.json")

    def checkpoint(self, spec: ShardSpec) -> str:
        return self.path("checkpoints", spec.name, "state.pt")

    def snapshot_dir(self, spec: ShardSpec) -> str:
        return self.path("snapshots", spec.name)

    def snapshot(self, spec: ShardSpec, iteration: int) -> str:
        return self.path("snapshots", spec.name, f"it-{iteration:07d}.pt")

    def failure(self, stage: str, spec: ShardSpec) -> str:
        return self.path("failed", stage, f"{spec.name}.json")

    def job_failure(self, stage: str, job: str) -> str:
        """Where the failure of an evaluation or NAS job is kept, its name made a file name."""
        return self.path("failed", stage, f"{re.sub(r'[^A-Za-z0-9@._-]+', '-', job).strip('-')}.json")

    def progress(self, spec: ShardSpec) -> str:
        return self.path("progress", f"{spec.name}.json")

    def baseline_file(self, method: str, spec: ShardSpec) -> str:
        return self.path("baselines", method, f"{spec.name}.parquet")

    def baseline_manifest(self, method: str, spec: ShardSpec) -> str:
        return self.path("baselines", method, f"{spec.name}.json")

    def scores_dir(self, settings_key: str) -> str:
        return self.path("eval", "scores", settings_key)

    def results(self) -> str:
        return self.path("eval", "results.parquet")


def _open_info(config: dict) -> DatasetInfo:
    from workers.data import open_dataset

    d = config["dataset"]
    return open_dataset(d["name"], d.get("root"), resolution=d.get("resolution")).info
