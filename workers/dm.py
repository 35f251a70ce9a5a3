"""Distribution Matching for a group of classes (the paper's Algorithm 1, grouped).

One iteration: draw a fresh random network, sample a real batch per class, draw
one Siamese augmentation per class, and minimise
    sum_c || mean embed(aug(real_c)) - mean embed(aug(syn_c)) ||^2
over the synthetic images with SGD. Every class of the group goes through one
forward pass (no Python loop over classes): class means are segment sums.

Every random stream of iteration ``t`` comes from ``derive_seed(seed, "iter", t)``,
so a checkpoint only needs the images, the optimiser state and ``t`` to
continue bit-identically.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.augment import DEFAULT_STRATEGY, DSAParams, apply_dsa, draw_params
from workers.data.types import DatasetInfo, ImageSet
from workers.devices import Precision, compile_problem
from workers.frequency_sampler import FrequencySampler, ascend, sampler_optimizer
from workers.matching import (
    BlendNetworks, NetworkSource, PoolNetworks, PoolStates, RandomNetworks, matching_loss,
)
from workers.model_queue import ModelQueue
from workers.networks import build_network, uses_batchnorm
from workers.parameterize import decode, encode
from workers.seeding import derive_seed, generator


# Real images normalised and augmented per call of apply_dsa (fp32 3x32x32: 12 MiB).
_AUGMENT_BLOCK = 1024
LOSS_EVERY_CUDA = 20


@dataclass(frozen=True)
class DMSettings:
    ipc: int
    iterations: int
    lr_img: float = 1.0
    momentum: float = 0.5
    batch_real: int = 256
    init: Literal["real", "noise"] = "real"
    model: str = "ConvNet"
    dsa_strategy: str = DEFAULT_STRATEGY
    # Real images are embedded in chunks of this many (0 = one pass; None = 32 on the CPU,
    # one pass on CUDA). Chunks keep first-layer activations in cache on the CPU (32
    # images of ConvNet at 32x32: 16 MiB, inside a 32 MiB L3; 64 spill, up to 1.4x
    # slower); the means do not depend on it but for float rounding (instance norm is
    # per image). BatchNorm models use one pass.
    embed_chunk: int | None = None
    precision: Precision = field(default_factory=Precision)
    compile: bool = False
    # Read the loss back to the host every N iterations (None: every iteration on the
    # CPU, where it costs nothing, every LOSS_EVERY_CUDA on CUDA, where it waits for
    # the device).
    loss_every: int | None = None
    # No host synchronisation inside an iteration (static shapes: augmentation applies
    # every op of the strategy and keeps each image's own). None: on CUDA only, where a
    # synchronisation stalls the device; the CPU's sorted path is 5x cheaper there.
    sync_free: bool | None = None
    # CUDA only: compile the embedding with CUDA graphs (torch.compile's "reduce-overhead"),
    # replaying each shape's kernels in one launch. Off until a GPU check shows the gain.
    cuda_graphs: bool = False
    # The recipe's pieces (workers.matching, workers.parameterize): where the embedding
    # network comes from (random: DM; pool: a state of a trained network; blend: a pool
    # network between its initial and final states; queue: IDM's networks trained on the
    # shard's real images while condensing; pixels: no network), how real and synthetic
    # embeddings compare (mean: DM; mmd with ``kernel``; cfd: characteristic functions, at
    # frequencies learned adversarially with ``cfd_sampler``), how many training images a
    # stored image holds (factor^2), and a cross-entropy of the synthetic images under the
    # matching network or under the final state of the pool network drawn (ce_weight 0: none;
    # with the queue, weighted by the network's training accuracy in percent, as IDM does).
    networks: Literal["random", "pool", "blend", "queue", "pixels"] = "random"
    loss: Literal["mean", "mmd", "cfd"] = "mean"
    kernel: Literal["linear", "rbf"] = "linear"
    factor: int = 1
    ce_weight: float = 0.0
    ce_network: Literal["matching", "trained"] = "trained"
    cfd_sampler: bool = False

    def __post_init__(self) -> None:
        if self.ipc <= 0:
            raise ValueError(f"condense.ipc must be >= 1, got {self.ipc}")
        if self.iterations < 0:
            raise ValueError(f"condense.iterations must be >= 0, got {self.iterations}")
        if self.batch_real <= 0:
            raise ValueError(f"condense.batch_real must be >= 1, got {self.batch_real}")
        if self.init not in ("real", "noise"):
            raise ValueError(f"condense.init must be 'real' or 'noise', got {self.init!r}")
        if self.loss_every is not None and self.loss_every <= 0:
            raise ValueError(f"loss_every must be >= 1, got {self.loss_every}")
        if self.factor < 1:
            raise ValueError(f"condense.factor must be >= 1, got {self.factor}")
        if self.cfd_sampler and (self.loss != "cfd" or self.networks == "pixels"):
            raise ValueError("condense.cfd_sampler learns the frequencies of condense.loss cfd on a network's embeddings")

    @property
    def images_per_class(self) -> int:
        """Training images per class: each stored image holds factor^2."""
        return self.ipc * self.factor**2

    def resolve(self, device: torch.device) -> "DMSettings":
        """These settings with the device's defaults filled in (what a run on ``device`` runs)."""
        on_cpu = device.type == "cpu"
        return replace(
            self,
            embed_chunk=self.embed_chunk if self.embed_chunk is not None else (32 if on_cpu else 0),
            loss_every=self.loss_every or (1 if on_cpu else LOSS_EVERY_CUDA),
            sync_free=self.sync_free if self.sync_free is not None else not on_cpu,
        )


@dataclass(frozen=True)
class Progress:
    iteration: int
    total: int
    loss: float
    it_per_s: float


@dataclass
class RealBatch:
    """One iteration's real batch: a fixed number of rows per class (static shapes), the
    rows beyond a class's size repeating its images and summed into a discarded slot."""

    index: torch.Tensor  # int64 [K * take], rows of the shard's real tensor, class-major
    groups: torch.Tensor  # int64 [K * take], each row's class slot 0..K-1 (its augmentation draw)
    targets: torch.Tensor  # int64 [K * take], the slot its embedding is summed into: K for padding
    counts: torch.Tensor  # float [K], real images per class slot


class ClassBank:
    """The real images of a group of classes, sorted by class, resident on the device."""

    def __init__(self, real: ImageSet, class_ids: Sequence[int], device: torch.device):
        self.class_ids = [int(c) for c in class_ids]
        if len(set(self.class_ids)) != len(self.class_ids):
            raise ValueError(f"duplicate class ids in {self.class_ids}")
        labels = real.labels.to(torch.int64)
        slot_of = {c: i for i, c in enumerate(self.class_ids)}
        unknown = sorted(set(labels.tolist()) - set(slot_of))
        if unknown:
            raise ValueError(f"real images carry classes {unknown[:10]} outside the group {self.class_ids}")
        slots = torch.tensor([slot_of[c] for c in labels.tolist()], dtype=torch.int64)
        order = torch.argsort(slots, stable=True)
        self.images = real.images[order].to(device)
        counts = torch.bincount(slots, minlength=len(self.class_ids))
        empty = [self.class_ids[i] for i in range(len(counts)) if counts[i] == 0]
        if empty:
            raise ValueError(f"classes {empty} have no real images")
        self.host_counts = counts.tolist()  # known once, on the host: no read-back per iteration
        self.counts = counts.to(device)
        self.offsets = (torch.cumsum(counts, 0) - counts).to(device)
        self.device = device

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def sample(self, per_class: int, gen: torch.Generator) -> RealBatch:
        """Up to ``per_class`` images of every class, without replacement, in one shot."""
        k, max_n = self.num_classes, max(self.host_counts)
        keys = torch.rand(k, max_n, generator=gen, device=self.device)
        col = torch.arange(max_n, device=self.device)
        keys = keys.masked_fill(col[None, :] >= self.counts[:, None], 2.0)  # padding sorts last
        take = min(per_class, max_n)
        order = torch.argsort(keys, dim=1)[:, :take]
        taken = torch.clamp(self.counts, max=per_class)
        valid = col[None, :take] < taken[:, None]
        # a class with fewer than ``take`` images repeats its first ones, summed into slot K
        index = self.offsets[:, None] + torch.where(valid, order, order[:, :1])
        groups = torch.arange(k, device=self.device)[:, None].expand(k, take)
        targets = torch.where(valid, groups, k)
        return RealBatch(index.flatten(), groups.flatten(), targets.flatten(), taken.to(torch.float32))


@dataclass
class Draw:
    batch: RealBatch
    params: DSAParams
    network: int | None = None  # the pool network the iteration's parameters come from


class DMCondenser:
    """Condenses the classes ``class_ids`` of ``real`` into ``ipc`` images each."""

    def __init__(
        self,
        real: ImageSet,
        info: DatasetInfo,
        class_ids: Sequence[int],
        settings: DMSettings,
        seed: int,
        device: torch.device | str = "cpu",
        pool: PoolStates | None = None,
    ):
        self.device = torch.device(device)
        self.settings = settings = settings.resolve(self.device)
        self.seed = int(seed)
        self.info = info
        self.bank = ClassBank(real, class_ids, self.device)
        self.mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1)
        self.pixels = settings.networks == "pixels"
        self.pool = pool.to(self.device) if pool is not None else None
        self.net = None if self.pixels else self._build_network(info)
        self.networks = self._network_source(info)
        self.sampler = self._frequency_sampler() if settings.cfd_sampler else None
        self.sampler_optimizer = sampler_optimizer(self.sampler) if self.sampler is not None else None
        self.matching = matching_loss(settings.loss, settings.kernel, self.sampler)
        # the final state of the pool network drawn, for the cross-entropy term
        self.expert = self._build_network(info) if settings.ce_weight > 0 and settings.ce_network == "trained" else None
        self.batchnorm = not self.pixels and uses_batchnorm(settings.model)
        self.compile_state = self._compile_embedding()
        k = self.bank.num_classes
        # the training images the stored ones decode to: images_per_class per class, class-major
        self.syn_groups = torch.arange(k, device=self.device).repeat_interleave(settings.images_per_class)
        self.syn_labels = torch.tensor(self.bank.class_ids, device=self.device)[self.syn_groups]
        self.syn = nn.Parameter(self._initial_images())
        self.optimizer = torch.optim.SGD([self.syn], lr=settings.lr_img, momentum=settings.momentum)
        self.iteration = 0
        self.losses: list[tuple[int, float]] = []

    # ----------------------------------------------------------------- setup
    def _network_source(self, info: DatasetInfo) -> NetworkSource | None:
        kind = self.settings.networks
        if kind == "pixels":
            return None
        if kind in ("pool", "blend") and self.pool is None:
            raise ValueError(f"condense.networks {kind} draws from a pool: pass its states")
        if kind == "pool":
            return PoolNetworks(self.pool)
        if kind == "queue":
            # contiguous, as every network that trains here (evaluation, pool): autograd through
            # InstanceNorm2d's channels_last path costs 1.4x a contiguous step on the CPU
            trainee = self._build_network(info).to(memory_format=torch.contiguous_format)
            for p in trainee.parameters():
                p.requires_grad_(True)
            return ModelQueue(trainee, self._training_batch, self.seed, self.device)
        return BlendNetworks(self.pool) if kind == "blend" else RandomNetworks()

    def _training_batch(self, gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` of the shard's real images drawn uniformly (every class), normalised, with their
        class ids: what the queue's networks train on."""
        bank = self.bank
        index = torch.randperm(bank.images.shape[0], generator=gen, device=self.device)[:size]
        slots = torch.arange(bank.num_classes, device=self.device).repeat_interleave(bank.counts)
        x = self._normalize(bank.images[index]).contiguous()
        return x, torch.tensor(bank.class_ids, device=self.device)[slots[index]]

    def _frequency_sampler(self) -> FrequencySampler:
        return FrequencySampler(self.bank.class_ids, self.net.classifier.in_features, self.seed, self.device)

    def _compile_embedding(self) -> str:
        """Compile the embedding when asked and this device can: "on", "off", or "off: <why>".
        A machine that cannot compile runs eager with a warning, never a failed shard."""
        if self.net is None:
            self._embed = lambda x: x.flatten(1)  # pixel space: nothing to compile
            return "off"
        self._embed = self.net.embed
        graphs = self.settings.cuda_graphs and self.device.type == "cuda"
        if not (self.settings.compile or graphs):
            return "off"
        problem = compile_problem(self.device)
        if problem:
            warnings.warn(f"condense.compile: running eager on {self.device.type}: {problem}", stacklevel=2)
            return f"off: {problem}"
        torch._dynamo.config.suppress_errors = True  # a graph that fails to compile runs eager instead
        self._embed = torch.compile(self.net.embed, mode="reduce-overhead" if graphs else None)
        return "on, CUDA graphs" if graphs else "on"

    def _build_network(self, info: DatasetInfo) -> nn.Module:
        net = build_network(self.settings.model, info.channels, info.num_classes, tuple(info.im_size))
        net = net.to(self.device, memory_format=self.settings.precision.memory_format())
        net.train()  # BatchNorm uses batch statistics, as in the paper
        for p in net.parameters():
            p.requires_grad_(False)  # only the images are learned
        return net

    def _initial_images(self) -> torch.Tensor:
        gen = generator(derive_seed(self.seed, "init"), self.device)
        s, bank = self.settings, self.bank
        if s.init == "noise":
            shape = (bank.num_classes * s.ipc, *bank.images.shape[1:])
            return torch.randn(shape, generator=gen, device=self.device)
        need = s.images_per_class  # each stored image starts as factor^2 real ones, shrunk into its tiles
        short = [c for c, n in zip(bank.class_ids, bank.host_counts) if n < need]
        if short:
            raise ValueError(
                f"classes {short[:10]} have fewer real images than the {need} that condense.ipc={s.ipc} "
                f"(x factor^2 = {s.factor**2}) starts from; lower ipc or use condense.init: noise"
            )
        batch = bank.sample(need, gen)
        return encode(self._normalize(bank.images[batch.index]), s.factor).contiguous()

    def _normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = (images_u8.to(torch.float32) / 255.0 - self.mean) / self.std
        return x.contiguous(memory_format=self.settings.precision.memory_format())

    # ------------------------------------------------------------------ loop
    def _real_pass(self, batch: RealBatch, params: DSAParams,
                   consume: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
        """``consume(embeddings fp32, their target slots)`` chunk by chunk over the real batch.

        No autograd here: the real side is a constant of the loss. Images are normalised
        and augmented a block at a time (few large ops instead of many small ones), then
        embedded chunk by chunk, so only one chunk's activations are ever alive."""
        n = batch.index.shape[0]
        chunk = n if self.batchnorm or self.settings.embed_chunk <= 0 else min(self.settings.embed_chunk, n)
        block = max(chunk, _AUGMENT_BLOCK // chunk * chunk)
        with torch.no_grad(), self.settings.precision.autocast(self.device):
            for first in range(0, n, block):
                rows = slice(first, first + block)
                x = apply_dsa(self._normalize(self.bank.images[batch.index[rows]]), batch.groups[rows], params,
                              static=self.settings.sync_free)
                targets = batch.targets[rows]
                for start in range(0, x.shape[0], chunk):
                    consume(self._embed_fixed(x[start : start + chunk], chunk), targets[start : start + chunk])

    def _real_means(self, batch: RealBatch, params: DSAParams) -> torch.Tensor:
        """[K, D]: class sums accumulated chunk by chunk (the last slot takes the padding)."""
        k = batch.counts.shape[0]
        sums: list[torch.Tensor] = []

        def add(emb: torch.Tensor, targets: torch.Tensor) -> None:
            if not sums:
                sums.append(emb.new_zeros(k + 1, emb.shape[1]))
            sums[0].index_add_(0, targets, emb)

        self._real_pass(batch, params, add)
        return sums[0][:k] / batch.counts[:, None]

    def _real_embeddings(self, batch: RealBatch, params: DSAParams) -> tuple[torch.Tensor, torch.Tensor]:
        """([K, take, D] embeddings, [K, take] weights: 0 for a small class's padding rows)."""
        k = batch.counts.shape[0]
        parts: list[torch.Tensor] = []
        self._real_pass(batch, params, lambda emb, targets: parts.append(emb))
        embeddings = torch.cat(parts).view(k, batch.index.shape[0] // k, -1)
        return embeddings, (batch.targets != k).view(k, -1).to(embeddings.dtype)

    def _embed_fixed(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """Embeddings (fp32) of ``x``; compiled, a short last chunk is padded to ``size``
        so that one input shape serves every call (no recompilation)."""
        keep = x.shape[0]
        if self.compile_state.startswith("on") and keep < size:
            x = torch.cat([x, x[-1:].expand(size - keep, *x.shape[1:])])
        return self._embed(x)[:keep].float()

    def _syn_augmented(self, params: DSAParams) -> torch.Tensor:
        """The stored images decoded to training images (factor^2 each) and augmented, with autograd."""
        x = decode(self.syn, self.settings.factor).contiguous(memory_format=self.settings.precision.memory_format())
        return apply_dsa(x, self.syn_groups, params, static=self.settings.sync_free)

    def _syn_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """[K, m, D] of the augmented training images ``x``. Forward in chunks of whole classes, all
        of one size (a divisor of the class count): a smaller working set (1.35x faster at 50
        images per class on the CPU) and one shape for a compiled embedding. BatchNorm models
        use one pass."""
        k, m = self.bank.num_classes, self.settings.images_per_class
        fits = k if self.batchnorm or self.settings.embed_chunk <= 0 else max(1, self.settings.embed_chunk // m)
        per = max(d for d in range(1, min(fits, k) + 1) if k % d == 0)
        parts = []
        with self.settings.precision.autocast(self.device):
            for start in range(0, k * m, per * m):
                parts.append(self._embed(x[start : start + per * m]).float().view(per, m, -1))
        return torch.cat(parts)

    def draw(self) -> Draw:
        """This iteration's network, real batch and augmentation draws."""
        gen = generator(derive_seed(self.seed, "iter", self.iteration), self.device)
        network = self.networks.draw(self.net, gen, self.seed, self.iteration) if self.networks else None
        batch = self.bank.sample(self.settings.batch_real, gen)
        params = draw_params(self.settings.dsa_strategy, self.bank.num_classes, gen, self.device)
        return Draw(batch, params, network)

    def loss(self, draw: Draw) -> torch.Tensor:
        """Sum over classes of the distance between real and synthetic embeddings (of their means:
        DM, and MMD with the linear kernel, which is the same; a Gaussian MMD; the distance of
        their characteristic functions), plus the weighted cross-entropy term."""
        s = self.settings
        x = self._syn_augmented(draw.params)
        syn = self._syn_embeddings(x)
        if self.matching.means_only:
            real, weights = self._real_means(draw.batch, draw.params), None
        else:
            real, weights = self._real_embeddings(draw.batch, draw.params)
        total = self.matching(real, weights, syn, lambda *ids: generator(
            derive_seed(self.seed, "iter", self.iteration, "cfd", *ids), self.device))
        if s.ce_weight > 0:
            total = total + s.ce_weight * self._cross_entropy(x, syn, draw.network)
        return total

    def _cross_entropy(self, x: torch.Tensor, syn: torch.Tensor, network: int | None) -> torch.Tensor:
        """Cross-entropy of the synthetic images' labels: under the matching network (its classifier
        on the embeddings already computed), or under the final state of the pool network drawn.
        Summed over classes of each class's mean, so that a class's term does not depend on how
        many classes its shard holds."""
        if self.expert is None:
            logits = self.net.classifier(syn.flatten(0, 1))
        else:
            self.expert.load_state_dict(self.pool.final[network])
            with self.settings.precision.autocast(self.device):
                logits = self.expert(x).float()
        weight = self.networks.accuracy(network) if isinstance(self.networks, ModelQueue) else 1.0
        return weight * F.cross_entropy(logits, self.syn_labels, reduction="sum") / self.settings.images_per_class

    def step(self) -> torch.Tensor:
        """One DM iteration; returns the loss as a device tensor (no host sync)."""
        with self.settings.precision.numerics(self.device):
            loss = self.loss(self.draw())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.sampler is not None:  # NCFM's min-max: the frequencies ascend the distance
                ascend(self.sampler, self.sampler_optimizer)
            if isinstance(self.networks, ModelQueue):  # IDM: the queue's networks train on
                self.networks.after_step(self.iteration)
        self.iteration += 1
        return loss.detach()

    def run(
        self,
        until: int | None = None,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        checkpoint_every: int = 0,
        on_checkpoint: Callable[[dict], None] | None = None,
    ) -> None:
        """Iterate up to ``until`` (default: the configured total)."""
        total = self.settings.iterations if until is None else until
        every = self.settings.loss_every
        pending: list[tuple[int, torch.Tensor]] = []
        started, start_it = time.perf_counter(), self.iteration
        while self.iteration < total:
            pending.append((self.iteration, self.step()))
            boundary = checkpoint_every > 0 and self.iteration % checkpoint_every == 0
            if len(pending) >= every or boundary or self.iteration == total:
                self.losses.extend((it, float(v)) for it, v in pending)  # one sync per flush
                pending.clear()
                if on_progress is not None:
                    rate = (self.iteration - start_it) / max(time.perf_counter() - started, 1e-9)
                    on_progress(Progress(self.iteration, total, self.losses[-1][1], rate))
            if boundary and on_checkpoint is not None and self.iteration < total:
                on_checkpoint(self.state_dict())

    # ------------------------------------------------------------ state/out
    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "seed": self.seed,
            "class_ids": list(self.bank.class_ids),
            "images": self.syn.detach().to("cpu", memory_format=torch.contiguous_format).clone(),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "losses": list(self.losses),
            **self._learned_state(),
        }

    def _learned_state(self) -> dict:
        """What the recipe learns beside the images: NCFM's samplers, IDM's queue."""
        state: dict = {}
        if self.sampler is not None:
            state["sampler"] = _to_cpu(self.sampler.state_dict())
            state["sampler_optimizer"] = _to_cpu(self.sampler_optimizer.state_dict())
        if isinstance(self.networks, ModelQueue):
            state["queue"] = self.networks.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["class_ids"] != self.bank.class_ids or state["seed"] != self.seed:
            raise ValueError(
                "checkpoint belongs to another shard "
                f"(classes {state['class_ids'][:5]}..., seed {state['seed']}); remove it to start over"
            )
        if tuple(state["images"].shape) != tuple(self.syn.shape):
            raise ValueError(f"checkpoint images have shape {tuple(state['images'].shape)}, expected {tuple(self.syn.shape)}")
        with torch.no_grad():
            self.syn.copy_(state["images"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
            self.sampler_optimizer.load_state_dict(state["sampler_optimizer"])
        if isinstance(self.networks, ModelQueue):
            self.networks.load_state_dict(state["queue"])
        self.iteration = int(state["iteration"])
        self.losses = [(int(i), float(v)) for i, v in state["losses"]]

    def synthetic(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the stored images float32 [K*ipc, C, H, W] on the CPU, global class ids int64); each
        decodes to factor^2 training images (workers.parameterize.decode)."""
        labels = torch.tensor(self.bank.class_ids, dtype=torch.int64).repeat_interleave(self.settings.ipc)
        return self.syn.detach().to("cpu", memory_format=torch.contiguous_format).clone(), labels


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu").clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
