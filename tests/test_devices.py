"""Where work computes: a reserved GPU that CUDA cannot use is an error, never a silent CPU."""

from __future__ import annotations

import socket

import pytest
import torch

from workers.devices import compute_device, cuda_problem

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine where CUDA is unusable")


def test_the_cpu_when_no_gpu_was_reserved_or_the_cpu_was_asked_for():
    assert compute_device("auto", reserved_gpu=False).type == "cpu"
    assert compute_device("cpu", reserved_gpu=True).type == "cpu"


@no_cuda
def test_a_reserved_gpu_without_cuda_fails_naming_the_host_and_the_cause():
    for policy, reserved in (("auto", True), ("cuda", False)):
        with pytest.raises(RuntimeError) as err:
            compute_device(policy, reserved_gpu=reserved)
        message = str(err.value)
        assert socket.gethostname() in message and cuda_problem() in message
        assert "resources.gpus_per_shard=0" in message


@no_cuda
def test_the_cause_is_named():
    assert cuda_problem()  # a CPU-only build, no driver, or no visible device: never ''
