"""The named evaluation protocols (``evaluate.protocol``): how each paper trained the networks
that scored its sets. A protocol fixes its labels, loss, optimizer, schedule and augmentation;
the constants below are the ones its code or configuration sets, cited per protocol.

``paper``: DM's (``evaluate_synset`` of the DC/DSA/DM code, ``utils.py``): SGD (lr 0.01, momentum
0.9, weight decay 5e-4), cross-entropy on the hard labels, mini-batches of 256, DSA on every
batch, the learning rate divided by 10 at half of the epochs with a new optimizer (the momentum
restarts). ``evaluate.labels: soft`` keeps this optimizer and relabels with a teacher (ours:
``workers.training.distill``).

``rded``: RDED's (LINs-lab/RDED at 3f6453d: ``argument.py``, ``validation/main.py``,
``validation/utils.py``, ``scripts/cifar10_10ipc_conv3_to_conv3_cr5.sh``): a frozen teacher
relabels every augmented batch; ``KLDivLoss(batchmean)`` of the student's and the teacher's
distributions at ``T = 20`` (``--mix-type cutmix`` sets it), not scaled by T^2; AdamW (lr 0.001
for ConvNets and ResNet-18, betas 0.9/0.999, weight decay 0.01 on the weight matrices and
kernels only: ``get_parameters``); ``LambdaLR`` stepped once per epoch with
``0.5 * (1 + cos(pi * epoch / epochs / 2))``, which ends at half the initial rate; 300 epochs;
per image ``ShufflePatches(factor)``, ``RandomResizedCrop(scale=(1/factor, 1))`` and a flip, then
CutMix (Beta(1, 1)) on the batch; the batch size 10 / 50 / 100 at 1 / 10 / 50 images per class,
doubled at 100 or 1,000 classes, at most the set's size (``rded_batch``).

``ddranking``: DD-Ranking's soft-label track (NUS-HPC-AI-Lab/DD-Ranking v0.2.0, b8b09664:
``configs/Demo_LRS_Soft_Label.yaml``, ``ddranking/metrics/soft_label.py``,
``ddranking/utils/train_and_eval.py``, ``ddranking/aug/cutmix.py``): ``soft_label_mode: M`` (the
teacher relabels each augmented batch), ``kl`` at ``temperature: 1.0`` with ``scale_loss: false``;
AdamW (weight decay 0.01 on every parameter), the ``cosine`` schedule (the same quarter cosine
per epoch as RDED's), CutMix (beta 1.0) on the batch (its ``custom_train_trans`` applies to image
folders, not to tensors), 300 epochs. DD-Ranking searches the learning rate in {0.001, 0.005,
0.01, 0.05, 0.1} per set by test accuracy; a fixed 0.001 (RDED's for these networks) is used here,
so that the test split chooses nothing.

Both soft protocols report the best test accuracy over epochs (RDED: every 10 epochs past 80% of
them; DD-Ranking: every 20); every protocol here reports the final network's, on the test split
as it is (RDED resizes CIFAR's test images to 36 and crops 32 back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Protocol = Literal["paper", "rded", "ddranking"]
Optimizer = Literal["sgd", "adamw"]


@dataclass(frozen=True)
class ProtocolRule:
    """What a protocol fixes, and its own values of the keys a config may set otherwise
    (``evaluate.labels``, ``temperature``, ``lr``, ``epochs``: null takes these)."""

    labels: Literal["hard", "soft"]
    temperature: float  # soft labels' temperature of teacher and student
    lr: float
    weight_decay: float
    epochs: int
    optimizer: Optimizer
    schedule: Literal["half_step", "quarter_cosine"]
    loss_scaled: bool  # soft labels: the KL multiplied by T^2
    augmentation: Literal["dsa", "rded", "cutmix"]
    decay_matrices_only: bool = False  # weight decay on weights of 2 dimensions or more only
    other_labels: bool = False  # evaluate.labels may name the other kind (the paper's SGD with a teacher's labels)


PROTOCOLS: dict[str, ProtocolRule] = {
    "paper": ProtocolRule(labels="hard", temperature=1.2, lr=0.01, weight_decay=5e-4, epochs=1000, optimizer="sgd",
                          schedule="half_step", loss_scaled=True, augmentation="dsa", other_labels=True),
    "rded": ProtocolRule(labels="soft", temperature=20.0, lr=0.001, weight_decay=0.01, epochs=300, optimizer="adamw",
                         schedule="quarter_cosine", loss_scaled=False, augmentation="rded", decay_matrices_only=True),
    "ddranking": ProtocolRule(labels="soft", temperature=1.0, lr=0.001, weight_decay=0.01, epochs=300,
                              optimizer="adamw", schedule="quarter_cosine", loss_scaled=False, augmentation="cutmix"),
}

# RDED's argument.py: the batch at 1 / 10 / 50 images per class (10 classes), doubled at 100 or 1,000.
_RDED_BATCH = {1: 10, 10: 50, 50: 100}


def rded_batch(ipc: int, num_classes: int, default: int) -> int:
    """RDED's training batch for a set of ``ipc`` stored images per class of ``num_classes``;
    ``default`` where its scripts set none (images per class other than 1, 10, 50)."""
    batch = _RDED_BATCH.get(ipc)
    if batch is None:
        return min(default, ipc * num_classes)
    if num_classes in (100, 1000):
        batch *= 2
    return min(batch, ipc * num_classes)
