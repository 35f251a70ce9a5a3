"""How many models one vectorised training step holds in a memory budget."""

from __future__ import annotations

import torch

from workers.network_costs import training_bytes_per_image
from workers.teachers import TeacherMemory

# Memory for one vectorised training step when the caller gives no budget: on CUDA a
# share of the device (an evaluation actor passes its own share), on the CPU a fixed cap.
CUDA_BUDGET_FRACTION = 0.5
CPU_BUDGET_BYTES = 8 << 30


def default_memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * CUDA_BUDGET_FRACTION)
    return CPU_BUDGET_BYTES


def models_per_step(model: str, shape: tuple[int, int, int], num_classes: int, batch: int, budget: int,
                    teacher: TeacherMemory | None = None) -> int:
    """How many models one vectorised step can hold in ``budget`` bytes (at least one): the
    activation memory of a batch depends on the architecture and the resolution. A teacher
    (soft labels) holds its weights once and labels every model's batch in the same step."""
    step = training_bytes_per_image(model, shape, num_classes) * batch
    if teacher is not None:
        budget -= teacher.weights
        step += teacher.per_image * batch
    return max(1, budget // step)
