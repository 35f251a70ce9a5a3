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
from workers.dm import DMCondenser, select_params
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

    def step(self) -> torch.Tensor:
        s, bank = self.settings, self.bank
        gen = generator(derive_seed(self.seed, "iter", self.iteration), self.device)
        net = self._fresh_network(gen)
        batch = bank.sample(s.batch_real, gen)
        params = draw_params(s.dsa_strategy, bank.num_classes, gen, self.device)
        reals, syns = [], []
        for c in range(bank.num_classes):
            one = select_params(params, torch.tensor([c], device=self.device))
            index = batch.index[batch.groups == c]
            real = self._normalize(bank.images[index])
            reals.append(apply_dsa(real, torch.zeros(len(index), dtype=torch.long, device=self.device), one))
            syn = self.syn[c * s.ipc : (c + 1) * s.ipc]
            syns.append(apply_dsa(syn, torch.zeros(s.ipc, dtype=torch.long, device=self.device), one))
        if self.batchnorm:  # the authors concatenate all classes so BN sees them together
            loss = self._concatenated_loss(net, reals, syns)
        else:
            loss = torch.zeros((), device=self.device)
            for real, syn in zip(reals, syns):
                out_real = net.embed(real).detach()
                out_syn = net.embed(syn)
                loss = loss + ((out_real.mean(0) - out_syn.mean(0)) ** 2).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        return loss.detach()

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
