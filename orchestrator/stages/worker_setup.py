"""What every task and actor of a run does first: threads, its device, its dataset reader."""

from __future__ import annotations

import torch

from orchestrator.run_dir import RunDir
from workers.data import DatasetReader, open_dataset
from workers.devices import compute_device


def open_reader(run: RunDir) -> DatasetReader:
    """The run's dataset, opened with the info the driver found: no statistics pass, no checks
    of the whole source, only the pixels asked for are decoded."""
    d = run.config.dataset
    return open_dataset(d.name, d.root, resolution=d.resolution, info=run.dataset)


def shard_worker(run: RunDir) -> torch.device:
    """A shard-sized task's threads (the same threads give the same bytes) and device."""
    r = run.config.resources
    torch.set_num_threads(max(1, int(r.cpus_per_shard)))
    return compute_device(r.device, reserved_gpu=r.gpus_per_shard > 0)
