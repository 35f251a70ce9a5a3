"""What every task and actor does first: threads, its device, its dataset reader."""

from __future__ import annotations

import torch

from orchestrator import ray_work
from orchestrator.config import DatasetConfig, ResourcesConfig
from orchestrator.errors import RunError
from orchestrator.run_dir import RunDir
from workers.data import DatasetInfo, DatasetReader, open_dataset
from workers.devices import compute_device, cuda_problem_here


def open_reader(dataset: DatasetConfig, info: DatasetInfo) -> DatasetReader:
    """The dataset, opened with the info the driver found: no statistics pass, no checks of
    the whole source, only the pixels asked for are decoded."""
    return open_dataset(dataset.name, dataset.root, resolution=dataset.resolution, info=info)


def run_reader(run: RunDir) -> DatasetReader:
    return open_reader(run.config.dataset, run.dataset)


def task_device(resources: ResourcesConfig) -> torch.device:
    """A shard-sized task's threads (the same threads give the same bytes) and device."""
    torch.set_num_threads(max(1, int(resources.cpus_per_shard)))
    return compute_device(resources.device, reserved_gpu=resources.gpus_per_shard > 0)


def check_gpus_usable(resources: ResourcesConfig, gpus: float, what: str) -> None:
    """Before any unit starts: when units will compute on reserved GPUs, one probe task placed
    like them must find CUDA usable; else an error naming the node and the cause."""
    if gpus <= 0 or resources.device == "cpu":
        return
    host, problem = ray_work.call(cuda_problem_here, options={"num_cpus": 0, "num_gpus": gpus})
    if problem:
        raise RunError(
            f"{what} reserve GPUs, but CUDA is unusable on {host}, where Ray placed one: {problem}. Compute on the "
            "CPU with --set resources.gpus_per_shard=0 --set evaluate.gpus=false (or resources.device=cpu to keep "
            "the reservation), or give that node a torch build its NVIDIA driver supports"
        )
