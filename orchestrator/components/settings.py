"""The workers' settings built from the run config, each by one function: the numerics
(``Precision``), the matching loop (``DMSettings``), RDED's selection (``RdedSettings``) and
every training of a fresh network (``TrainSettings``: evaluation, herding's features, the pool,
the NAS trainings).

Nothing else builds these records from a config, so a key of the config reaches every
component that it should (``precision.*`` and ``evaluate.lr`` reach herding's features too).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from orchestrator.config import RunConfig
from orchestrator.pool_dir import PoolSettings
from workers.devices import Precision
from workers.dm import DMSettings
from workers.rded import RdedSettings
from workers.training.protocols import rded_batch
from workers.training.settings import TrainSettings

Purpose = Literal["evaluate", "coreset_features", "pool", "nas_proxy", "nas_early_stopping", "nas_whole"]


def precision(cfg: RunConfig, *, condensing: bool = False) -> Precision:
    """One rule for condensation and evaluation (``precision.*``); the matching loop adds its
    own layout and bf16 switches (``condense.*``)."""
    p = cfg.precision
    if condensing:
        c = cfg.condense
        return Precision(bf16=c.bf16, tf32=p.tf32, channels_last=c.channels_last, deterministic=p.deterministic)
    return Precision(tf32=p.tf32, deterministic=p.deterministic)


def dm_settings(cfg: RunConfig) -> DMSettings:
    c = cfg.condense
    pixels = c.method == "mmd_pixel"  # no network, no augmentation: MMD of the images themselves
    return DMSettings(
        ipc=c.ipc, iterations=c.iterations, lr_img=c.effective_lr_img, momentum=c.momentum,
        batch_real=c.batch_real, init=c.init, model=c.model, dsa_strategy="none" if pixels else c.dsa_strategy,
        embed_chunk=c.embed_chunk, compile=c.effective_compile, loss_every=c.loss_every, cuda_graphs=c.cuda_graphs,
        precision=precision(cfg, condensing=True),
        networks="pixels" if pixels else c.networks, loss="mmd" if pixels else c.loss, kernel=c.kernel,
        factor=c.factor, ce_weight=c.ce_weight, ce_network=c.ce_network, cfd_sampler=c.cfd_sampler,
    )


def rded_settings(cfg: RunConfig) -> RdedSettings:
    c, r = cfg.condense, cfg.condense.effective_rded
    return RdedSettings(ipc=c.ipc, stitch=r.stitch, crops=r.crops, candidates=r.candidates, scale=r.scale,
                        batch=r.batch)


def train_settings(cfg: RunConfig, purpose: Purpose) -> TrainSettings:
    """How a fresh network trains for ``purpose``: the evaluation's protocol (and herding's
    features, trained like an evaluation network for ``evaluate.coreset_feature_epochs``), the
    pool's (``pool.*``), or the NAS trainings (``nas.*``: proxies augmented like the evaluation,
    the real training split not)."""
    e, n, dsa, numerics = cfg.evaluate, cfg.nas, cfg.condense.dsa_strategy, precision(cfg)
    if purpose == "evaluate":
        return TrainSettings(epochs=e.protocol_epochs, lr=e.protocol_lr, weight_decay=e.rule.weight_decay,
                             batch=e.batch, dsa_strategy=dsa if e.augment else None, precision=numerics,
                             labels=e.protocol_labels, temperature=e.protocol_temperature, protocol=e.protocol)
    if purpose == "coreset_features":  # trained on the real labels themselves
        return TrainSettings(epochs=e.coreset_feature_epochs, lr=e.feature_lr, batch=e.batch, dsa_strategy=dsa,
                             precision=numerics)
    if purpose == "pool":
        p = PoolSettings.of(cfg)
        return TrainSettings(epochs=p.epochs, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
                             batch=p.batch, dsa_strategy=p.dsa_strategy, precision=numerics)
    epochs = n.whole_epochs if purpose == "nas_whole" else n.epochs
    return TrainSettings(epochs=epochs, lr=n.lr, batch=n.batch, dsa_strategy=dsa if purpose == "nas_proxy" else None,
                         precision=numerics)


def set_settings(cfg: RunConfig, method: str, classes: int) -> TrainSettings:
    """The evaluation's settings for one method's set of ``classes`` classes: under the rded
    protocol, RDED's batch for its images per class and classes, and its patch shuffling over
    the stitched images of ``condense.method: rded`` (none over real images: the baselines)."""
    settings = train_settings(cfg, "evaluate")
    if cfg.evaluate.protocol != "rded":
        return settings
    c = cfg.condense
    stitched = c.method == "rded" and method.split("@")[0] == "dm"
    return replace(settings, batch=rded_batch(c.ipc, classes, settings.batch),
                   patch_factor=c.effective_rded.stitch if stitched else 1)
