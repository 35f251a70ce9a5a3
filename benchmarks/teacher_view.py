"""How a teacher sees condensed sets: its accuracy on each run's training images and the
probability it gives their true class, at T = 1 and at the soft-label temperature.

    .venv/bin/python benchmarks/teacher_view.py POOL_DIR RUN [RUN ...] [--temperature 20]

Under a soft-label protocol the student learns the teacher's outputs on the set's images,
not the set's labels: a set whose images the teacher assigns to other classes teaches
those classes. Reads each run's set as its evaluation loads it (decoded by its
condense.factor, before any augmentation), its random baseline where one is committed,
and the pool's network 0 in its final state.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

from orchestrator.artifacts.pool_networks import read_states
from orchestrator.artifacts.training_sets import read_method
from orchestrator.errors import RunError
from orchestrator.pool_dir import PoolDir
from orchestrator.run_opening import opened
from workers.teachers import NetworkTeacher, load_teacher


@dataclass(frozen=True)
class TeacherView:
    images: int
    accuracy: float  # the teacher's top-1 on the set's own labels
    p_true: float  # mean softmax probability of the true class, T = 1
    p_true_soft: float  # the same at the protocol's temperature


def teacher_view(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor, temperature: float) -> TeacherView:
    with torch.no_grad():
        logits = teacher(images)
    true = labels[:, None]
    return TeacherView(len(labels), (logits.argmax(1) == labels).float().mean().item(),
                       torch.softmax(logits, 1).gather(1, true).mean().item(),
                       torch.softmax(logits / temperature, 1).gather(1, true).mean().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pool")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--temperature", type=float, default=20.0)
    args = parser.parse_args()
    pool = PoolDir.at(args.pool)
    spec = NetworkTeacher(pool.record.settings.model, read_states(pool, 0)["states"][-1])  # read once
    for uri in args.runs:
        run = opened(uri)
        info = run.dataset  # load_teacher checks that the teacher fits each run's data
        teacher = load_teacher(spec, channels=info.channels, num_classes=info.num_classes, im_size=tuple(info.im_size))
        for method in ("dm", "random"):  # "dm": the run's own set, whatever its method
            try:
                images, labels = read_method(run, method)
            except RunError:  # no random baseline committed in this run
                continue
            view = teacher_view(teacher, images, labels, args.temperature)
            name = (run.config.condense.recipe or run.config.condense.method) if method == "dm" else method
            print(f"{uri}  {name:8s} {view.images:5d} images  teacher accuracy {view.accuracy:.3f}  "
                  f"p(true) {view.p_true:.3f}  p(true) at T {args.temperature:g} {view.p_true_soft:.3f}")

if __name__ == "__main__":
    main()
