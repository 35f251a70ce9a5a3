"""Many networks of one architecture run as one, with torch.func.

``StackedNetworks`` stacks the parameters and buffers of M networks along a new
leading dimension and runs them with ``vmap`` over ``functional_call``: one
forward, one backward and one optimizer step train all M networks, each on its
own inputs. The stacked parameters are ordinary leaf tensors, so any
elementwise optimizer (SGD with momentum and weight decay) stepping them all
at once is the same as stepping each network on its own.

BatchNorm works too: its running statistics are stacked like the parameters
and passed to every call as batched buffers, so each network updates its own
statistics in training and reads them in eval mode.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class StackedNetworks:
    """M networks of one architecture, callable on ``[M, B, ...]`` (or shared ``[B, ...]``) inputs."""

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        if len(nets) == 0:
            raise ValueError("StackedNetworks needs at least one network")
        kinds = {type(n) for n in nets}
        if len(kinds) != 1:
            raise ValueError(f"StackedNetworks needs networks of one architecture, got {sorted(k.__name__ for k in kinds)}")
        self.size = len(nets)
        self.params, self.buffers = stack_module_state(list(nets))
        # The skeleton holds no data: every call gets its tensors from the stacks.
        self.skeleton = copy.deepcopy(nets[0]).to("meta")

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def train(self, mode: bool = True) -> "StackedNetworks":
        self.skeleton.train(mode)
        return self

    def eval(self) -> "StackedNetworks":
        return self.train(False)

    def _one(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.skeleton, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor, *, shared_input: bool = False) -> torch.Tensor:
        """Logits ``[M, B, K]``: network m on ``x[m]``, or every network on ``x`` when shared."""
        if not shared_input and x.shape[0] != self.size:
            raise ValueError(f"expected inputs [{self.size}, B, ...] (one batch per network), got {list(x.shape)}")
        in_dims = (0, 0, None if shared_input else 0)
        return vmap(self._one, in_dims=in_dims, randomness="error")(self.params, self.buffers, x)

    @torch.no_grad()
    def write_back(self, nets: Sequence[nn.Module]) -> None:
        """Copy network m's stacked parameters and buffers into ``nets[m]``."""
        for m, net in enumerate(nets):
            for name, tensor in (*net.named_parameters(), *net.named_buffers()):
                stack = self.params[name] if name in self.params else self.buffers[name]
                tensor.copy_(stack[m])
