"""What every task and actor of a run does first: threads, its device, its dataset reader."""

from __future__ import annotations

import torch

from orchestrator import ray_work
from orchestrator.run_dir import RunDir, RunError
from workers.data import DatasetReader, open_dataset
from workers.devices import compute_device, cuda_problem_here


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


def check_gpus_usable(run: RunDir, gpus: float, what: str) -> None:
    """Before any unit starts: when units will compute on reserved GPUs, one probe task placed
    like them must find CUDA usable; else an error naming the node and the cause."""
    if gpus <= 0 or run.config.resources.device == "cpu":
        return
    host, problem = ray_work.call(cuda_problem_here, options={"num_cpus": 0, "num_gpus": gpus})
    if problem:
        raise RunError(
            f"{what} reserve GPUs, but CUDA is unusable on {host}, where Ray placed one: {problem}. Compute on the "
            "CPU with --set resources.gpus_per_shard=0 --set evaluate.gpus=false (or resources.device=cpu to keep "
            "the reservation), or give that node a torch build its NVIDIA driver supports"
        )
