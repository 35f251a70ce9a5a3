"""The paper's Algorithm 1 as its authors' code runs it: one class at a time.

Kept as the yardstick for the grouped loop in ``workers.dm``: it does the same
work the published implementation does (a new network module every iteration,
the real batch of each class embedded with autograd on and then detached, one
augmentation draw per class), but takes its random draws from the same
streams as ``DMCondenser``, so both produce the same images within float
tolerance. Used by tests and by ``dmcondense bench``; not for production runs.
"""

from __future__ import annotations

import torch

from workers.augment import apply_dsa, draw_params
from workers.dm import DMCondenser, Draw
from workers.networks import build_network, init_parameters_
from workers.seeding import derive_seed, generator


class ReferenceDM(DMCondenser):
    """Per-class loop with the grouped condenser's state, checkpoints and random streams."""

    def _fresh_network(self, gen: torch.Generator) -> torch.nn.Module:
        info = self.info
        net = build_network(self.settings.model, info.channels, info.num_classes, tuple(info.im_size))
        net = net.to(self.device)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        init_parameters_(net, gen)
        return net

    def draw(self) -> Draw:
        gen = generator(derive_seed(self.seed, "iter", self.iteration), self.device)
        self.ref_net = self._fresh_network(gen)  # a new module every iteration, as published
        batch = self.bank.sample(self.settings.batch_real, gen)
        params = draw_params(self.settings.dsa_strategy, self.bank.num_classes, gen, self.device)
        return Draw(batch, params)

    def loss(self, draw: Draw) -> torch.Tensor:
        s, bank, net = self.settings, self.bank, self.ref_net
        reals, syns = [], []
        for c in range(bank.num_classes):
            one = draw.params.rows(slice(c, c + 1))
            index = draw.batch.index[draw.batch.targets == c]  # the padding rows of a small class count nowhere
            zeros = torch.zeros(len(index), dtype=torch.long, device=self.device)
            reals.append(apply_dsa(self._normalize(bank.images[index]), zeros, one))
            syn = self.syn[c * s.ipc : (c + 1) * s.ipc]
            syns.append(apply_dsa(syn, torch.zeros(s.ipc, dtype=torch.long, device=self.device), one))
        if self.batchnorm:  # the authors concatenate all classes so BN sees them together
            return self._concatenated_loss(net, reals, syns)
        loss = torch.zeros((), device=self.device)
        for real, syn in zip(reals, syns):
            out_real = net.embed(real).detach()  # autograd on, then detached: the published way
            out_syn = net.embed(syn)
            loss = loss + ((out_real.mean(0) - out_syn.mean(0)) ** 2).sum()
        return loss

    def _concatenated_loss(self, net: torch.nn.Module, reals: list, syns: list) -> torch.Tensor:
        out_real = net.embed(torch.cat(reals)).detach()
        out_syn = net.embed(torch.cat(syns))
        loss = torch.zeros((), device=self.device)
        r0 = s0 = 0
        for real, syn in zip(reals, syns):
            r1, s1 = r0 + len(real), s0 + len(syn)
            loss = loss + ((out_real[r0:r1].mean(0) - out_syn[s0:s1].mean(0)) ** 2).sum()
            r0, s0 = r1, s1
        return loss
