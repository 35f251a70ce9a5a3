"""Soft labels: a frozen teacher in eval mode gives logits ``t`` on exactly the augmented batch
the student sees, and the student's logits ``z`` minimise ``KL(softmax(t/T) || softmax(z/T))``,
averaged over the batch (DD-Ranking's ``soft_label_mode="M"`` with the ``kl`` criterion and RDED's
``KLDivLoss(reduction="batchmean")`` alike).

Under the paper protocol (``evaluate.labels: soft``, ours) the loss is scaled by ``T^2`` (Hinton
et al.'s distillation), which DD-Ranking and RDED leave off: they pair the loss with AdamW, whose
steps do not depend on the loss scale, while SGD's do, and with ``T^2`` the gradient's size
hardly depends on ``T``, so the paper's learning rate fits; its default ``T = 1.2`` is
``KLDivergenceLoss``'s default. The teacher draws nothing at random, so soft-label training
keeps the draws of hard-label training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workers.training.settings import TrainSettings


def checked_teacher(settings: TrainSettings, teacher: nn.Module | None, device: torch.device) -> nn.Module | None:
    """The teacher that soft labels need, on ``device`` and in eval mode; None for hard labels.

    A teacher given with hard labels is refused rather than ignored: it would mean the caller
    meant soft labels."""
    if settings.labels == "hard":
        if teacher is not None:
            raise ValueError("a teacher was given for hard-label training: set TrainSettings.labels='soft' "
                             "to train on its labels, or pass no teacher")
        return None
    if teacher is None:
        raise ValueError("TrainSettings.labels is 'soft' but no teacher was given: pass the network that "
                         "relabels each batch (workers.teachers.load_teacher)")
    return teacher.to(device).eval()


@torch.no_grad()
def teacher_logits(teacher: nn.Module, xb: torch.Tensor) -> torch.Tensor:
    return teacher(xb)


def soft_label_losses(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                      scaled: bool = True) -> torch.Tensor:
    """Per-image ``KL(softmax(targets/T) || softmax(logits/T))``, times ``T^2`` when ``scaled``;
    ``[N]`` for ``[N, K]`` logits."""
    if targets.shape != logits.shape:
        raise ValueError(f"the teacher's logits {list(targets.shape)} do not match the student's "
                         f"{list(logits.shape)}: the teacher must classify the same {logits.shape[-1]} classes")
    log_p = F.log_softmax(logits / temperature, dim=-1)
    log_q = F.log_softmax(targets / temperature, dim=-1)  # log-space: no 0 * log 0
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=-1)
    return temperature**2 * kl if scaled else kl


def per_image_losses(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, settings: TrainSettings,
                     teacher: nn.Module | None) -> torch.Tensor:
    """``[N]`` losses of ``[N, K]`` logits: cross-entropy on the labels, or the teacher's soft labels."""
    if teacher is None:
        return F.cross_entropy(logits, yb, reduction="none")
    return soft_label_losses(logits, teacher_logits(teacher, xb), settings.temperature, settings.rule.loss_scaled)


def batch_loss(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, settings: TrainSettings,
               teacher: nn.Module | None) -> torch.Tensor:
    """The mean loss of one batch."""
    if teacher is None:
        return F.cross_entropy(logits, yb)
    return per_image_losses(logits, xb, yb, settings, teacher).mean()


def stacked_losses(logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, settings: TrainSettings,
                   teacher: nn.Module | None) -> torch.Tensor:
    """Each model's mean loss ``[M]`` from its logits ``[M, b, K]`` on its batch ``xb[m]``."""
    per_image = per_image_losses(logits.flatten(0, 1), xb.flatten(0, 1), yb.flatten(), settings, teacher)
    return per_image.view(yb.shape).mean(dim=1)
