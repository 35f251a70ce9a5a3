"""IDM's queue of networks trained on the fly while the images are condensed.

IDM (Zhao et al., CVPR 2023, "Improved Distribution Matching") keeps a queue of networks: it
starts with 3 random ones, adds a fresh one every 30 iterations (dropping the oldest beyond
100), matches each iteration in one network drawn from the queue, and after the images' step
trains 2 networks of the queue for 10 SGD steps each on batches of 256 real images (lr 0.01,
momentum 0.9, weight decay 5e-4: its CIFAR-10 command). Its cross-entropy term is weighted by
the drawn network's training accuracy in percent (``accuracy``).

Here every shard keeps its own queue, trained on the shard's own real images only, from the
shard's seed, and checkpointed with the shard (``state_dict``): the networks never see a
synthetic image, so given the network a class's loss depends on its own images only, and a
resumed shard continues with the queue it stopped with. A network's accuracy is that of its
latest training round (IDM averages since its last log, every 100 iterations).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workers.networks import init_parameters_
from workers.seeding import derive_seed, generator

START, SIZE, PUSH_EVERY = 3, 100, 30
TRAIN_NETWORKS, TRAIN_STEPS, TRAIN_BATCH = 2, 10, 256
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4

State = dict[str, torch.Tensor]
# (generator) -> (normalised real images, their class ids): one training batch of the shard's images
BatchSampler = Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class QueuedNetwork:
    params: State
    momentum: State  # SGD's buffers, empty before the first step
    correct: int = 0  # of its latest training round
    seen: int = 0


class ModelQueue:
    """A NetworkSource whose networks train between iterations (``after_step``)."""

    def __init__(self, trainee: nn.Module, sample: BatchSampler, seed: int, device: torch.device) -> None:
        self.trainee, self.sample, self.seed, self.device = trainee, sample, seed, device
        self.created = 0
        self.members: list[QueuedNetwork] = []
        for _ in range(START + 1):  # IDM's first 3, and the one it adds at iteration 0
            self._push()

    def _push(self) -> None:
        init_parameters_(self.trainee, generator(derive_seed(self.seed, "queue", self.created), self.device))
        self.created += 1
        self.members.append(QueuedNetwork(_params(self.trainee), {}))
        if len(self.members) > SIZE:
            self.members.pop(0)

    def draw(self, net: nn.Module, gen: torch.Generator, seed: int, iteration: int) -> int | None:
        index = _rng(seed, iteration, "draw").randrange(len(self.members))
        _load(net, self.members[index].params)
        return index

    def accuracy(self, index: int) -> float:
        """The training accuracy (%) of queue member ``index`` in its latest round; 0 before any."""
        member = self.members[index]
        return 100.0 * member.correct / member.seen if member.seen else 0.0

    def after_step(self, iteration: int) -> None:
        """Train TRAIN_NETWORKS members drawn from (seed, iteration) for TRAIN_STEPS steps each; then
        add the network IDM adds at the start of the next iteration, every PUSH_EVERY (here, so that
        drawing stays free of side effects)."""
        order = list(range(len(self.members)))
        _rng(self.seed, iteration, "train").shuffle(order)
        gen = generator(derive_seed(self.seed, "iter", iteration, "queue"), self.device)
        for index in order[:TRAIN_NETWORKS]:
            self._train(self.members[index], gen)
        if (iteration + 1) % PUSH_EVERY == 0:
            self._push()

    def _train(self, member: QueuedNetwork, gen: torch.Generator) -> None:
        _load(self.trainee, member.params)
        params = dict(self.trainee.named_parameters())
        member.correct = member.seen = 0
        for _ in range(TRAIN_STEPS):
            x, y = self.sample(gen, TRAIN_BATCH)
            with torch.enable_grad():
                logits = self.trainee(x)
                grads = torch.autograd.grad(F.cross_entropy(logits, y), list(params.values()))
            with torch.no_grad():
                for (name, p), g in zip(params.items(), grads):  # torch.optim.SGD's update, written out
                    d = g.add(p, alpha=WEIGHT_DECAY)
                    buf = member.momentum.get(name)
                    member.momentum[name] = d.clone() if buf is None else buf.mul_(MOMENTUM).add_(d)
                    p.sub_(member.momentum[name], alpha=LR)
            member.correct += int((logits.argmax(1) == y).sum())
            member.seen += y.shape[0]
        member.params = _params(self.trainee)

    def state_dict(self) -> dict:
        return {"created": self.created, "members": [
            {"params": _cpu(m.params), "momentum": _cpu(m.momentum), "correct": m.correct, "seen": m.seen}
            for m in self.members]}

    def load_state_dict(self, state: dict) -> None:
        self.created = int(state["created"])
        self.members = [QueuedNetwork({k: v.to(self.device) for k, v in m["params"].items()},
                                      {k: v.to(self.device) for k, v in m["momentum"].items()},
                                      int(m["correct"]), int(m["seen"])) for m in state["members"]]


def _params(net: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _load(net: nn.Module, state: State) -> None:
    with torch.no_grad():
        for key, value in net.state_dict().items():
            value.copy_(state[key])  # in place: a compiled embedding stays valid


def _cpu(state: State) -> State:
    return {k: v.detach().to("cpu").clone() for k, v in state.items()}


def _rng(seed: int, iteration: int, purpose: str) -> random.Random:
    return random.Random(derive_seed(seed, "iter", iteration, "queue", purpose))
