"""The report: report.md (accuracy table, the paper's figure, timings), grid.png, loss.png (a
matching method's), sweep.png."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator import storage
from orchestrator.config import RECIPE_DEPARTURES, RECIPES, CondenseConfig, RunConfig, TeacherConfig
from orchestrator.figures import plt, png
from orchestrator.run_dir import RunDir
from orchestrator.components.pictures import histogram_png
from orchestrator.artifacts.score_statistics import FAIR_SCORES, summarize
from orchestrator.artifacts.scores import Score
from orchestrator.artifacts.shards import ShardManifest, shard_state, snapshot_iteration
from orchestrator.artifacts.training_sets import TrainingSet, committed_files, load
from orchestrator.commits import CorruptFile
from workers.data import denormalize

GRID_CLASSES = 100  # grid.png's rows at most; more classes are sampled, with their index in report.md
LOSS_CURVES = 24  # loss.png's curves at most, one per shard; more shards are drawn as their spread

# Table 1 of the paper, ConvNet, mean accuracy (%): dataset -> method -> ipc -> accuracy.
PAPER_TABLE1: dict[str, dict[str, dict[int, float]]] = {
    "mnist": {"dm": {1: 89.7, 10: 97.5, 50: 98.6}, "random": {1: 64.9, 10: 95.1, 50: 97.9},
              "herding": {1: 89.2, 10: 93.7, 50: 94.8}, "forgetting": {1: 35.5, 10: 68.1, 50: 88.2}},
    "cifar10": {"dm": {1: 26.0, 10: 48.9, 50: 63.0}, "random": {1: 14.4, 10: 26.0, 50: 43.4},
                "herding": {1: 21.5, 10: 31.6, 50: 40.4}, "forgetting": {1: 13.5, 10: 23.3, 50: 23.3}},
    "cifar100": {"dm": {1: 11.4, 10: 29.7, 50: 43.6}, "random": {1: 4.2, 10: 14.6, 50: 30.0},
                 "herding": {1: 8.4, 10: 17.3, 50: 33.7}, "forgetting": {1: 4.5, 10: 15.1, 50: 30.5}},
    "tinyimagenet": {"dm": {1: 3.9, 10: 12.9, 50: 24.1}, "random": {1: 1.4, 10: 5.0, 50: 15.0},
                     "herding": {1: 2.8, 10: 6.3, 50: 16.7}, "forgetting": {1: 1.6, 10: 5.1, 50: 15.0}},
    "imagenet": {"dm": {1: 1.3, 10: 5.7, 50: 11.4}, "random": {1: 0.52, 10: 1.94, 50: 7.54}},
}


# Each recipe's own paper, ConvNet, hard labels, CIFAR-10 (%): recipe -> ipc -> accuracy, the figures
# its config states (configs/cifar10-ipc10-<recipe>.yaml).
RECIPE_PAPERS: dict[str, dict[int, float]] = {
    "m3d": {1: 45.3, 10: 63.5, 50: 69.9}, "idm": {1: 45.6, 10: 58.6, 50: 67.5},
    "dance": {1: 47.1, 10: 70.8, 50: 76.1}, "ncfm": {1: 49.5, 10: 71.8, 50: 77.4},
}


def paper_figure(dataset: str, method: str, ipc: int, model: str) -> float | None:
    """Table 1's figure for a method of the paper; for a recipe's name (as synthetic_label gives it
    for the recipe as shipped), that recipe's paper's CIFAR-10 figure."""
    if model not in ("ConvNet", "ConvNetD4"):
        return None
    if method in RECIPE_PAPERS:
        return RECIPE_PAPERS[method].get(ipc) if dataset == "cifar10" else None
    return PAPER_TABLE1.get(dataset, {}).get(method, {}).get(ipc)


@dataclass(frozen=True)
class TableRow:
    method: str  # as scored: dm, dm@<iteration>, a baseline
    label: str  # as shown: the synthetic set named by its recipe (synthetic_label)
    model: str
    n: int
    mean: float
    std: float
    paper: float | None  # Table 1 of the paper, where this setting is one of its
    ior: float | None = None  # DD-Ranking's fair scores, in percent (artifacts.scores.with_fair_scores)
    hlr: float | None = None
    lrs: float | None = None
    ars: float | None = None
    protocol: str = "paper"  # evaluate.protocol that scored it

    @property
    def fair(self) -> list[str]:
        """IOR, HLR (signed points), LRS and ARS as table cells; "-" where not computable."""
        return ["-" if (v := getattr(self, name)) is None else (f"{v:+.2f}" if name in ("ior", "hlr") else f"{v:.2f}")
                for name in FAIR_SCORES]


FAIR_HEADS = tuple(name.upper() for name in FAIR_SCORES)


def synthetic_label(cfg: RunConfig) -> str:
    """The name of the run's synthetic set in tables: its method or recipe, and the pieces it
    sets apart from that recipe's."""
    c = cfg.condense
    if c.method == "mmd_pixel":
        return f"mmd_pixel ({c.kernel})"
    if c.method == "rded":
        return "rded" if c.effective_rded.stitch == 1 else f"rded (stitch {c.effective_rded.stitch})"
    name = c.recipe or "dm"
    base = {**CondenseConfig().model_dump(), **RECIPES[name]}
    changed = []
    if c.networks != base["networks"] or c.pool_group is not None:
        group = "" if c.pool_group is None else f" {c.pool_group[0]:g}-{c.pool_group[1]:g}%"
        changed.append(f"{c.networks}{group}")
    if c.loss != base["loss"] or (c.loss == "mmd" and c.kernel != base["kernel"]):
        changed.append(f"{c.loss} {c.kernel}" if c.loss == "mmd" else c.loss)
    if c.factor != base["factor"]:
        changed.append(f"factor {c.factor}")
    if (c.ce_weight, c.ce_network) != (base["ce_weight"], base["ce_network"]):
        changed.append(f"ce {c.ce_weight:g} {c.ce_network}" if c.ce_weight else "no ce")
    if c.cfd_sampler != base["cfd_sampler"]:
        changed.append("sampler" if c.cfd_sampler else "no sampler")
    return f"{name} [{', '.join(changed)}]" if changed else name


def how_made(cfg: RunConfig) -> str:
    c = cfg.condense
    if c.method == "rded":
        r = c.effective_rded
        return (f"{synthetic_label(cfg)}: {r.candidates} real images x {r.crops} crops per class scored by the teacher, "
                f"the best {c.ipc * r.stitch**2} stitched {r.stitch}x{r.stitch}")
    return f"{c.iterations} iterations of {synthetic_label(cfg)} with {c.model}"


def departures(cfg: RunConfig) -> str:
    """Where the run's recipe departs from its paper, as a sentence; '' for DM, RDED and MMD."""
    c = cfg.condense
    if c.method != "dm" or c.recipe not in RECIPE_DEPARTURES:
        return ""
    text = RECIPE_DEPARTURES[c.recipe]
    if c.loss == "cfd" and not c.cfd_sampler:
        text += ("; the frequencies are standard Gaussian draws, as in NCFM's released CIFAR-10 configs "
                 "(condense.cfd_sampler: true learns them adversarially, as its paper)")
    return f"Where the {c.recipe} recipe departs from its paper: {text}."


def results_table(scores: list[Score], cfg: RunConfig, dataset: str) -> list[TableRow]:
    """mean +- std per (method, model), the synthetic set named by ``synthetic_label``; the paper's
    Table 1 figure where the setting is one of its (DM with random networks, the baselines) and the
    evaluation its protocol (hard labels, augmented)."""
    name, rows = synthetic_label(cfg), []
    e = cfg.evaluate
    papers_protocol = e.protocol == "paper" and e.protocol_labels == "hard" and e.augment
    for s in summarize(scores):
        label = name + s.method[2:] if s.method.startswith("dm") else s.method  # dm@200 -> <name>@200
        paper = paper_figure(dataset, label, cfg.condense.ipc, s.model) if label in (s.method, name) \
            and papers_protocol else None
        rows.append(TableRow(s.method, label, s.model, s.n, s.mean, s.std, paper, s.ior, s.hlr, s.lrs, s.ars,
                             cfg.evaluate.protocol))
    return rows


FAIR_NOTE = ("IOR, HLR, LRS, ARS: DD-Ranking's fair scores (v0.2.0 definitions, orchestrator/fair_scores.py), per "
             "network seed then averaged, in points: IOR the accuracy over the random set's under the same protocol, "
             "HLR the real data's hard-label accuracy (the pool's final states on its validation split) less this "
             "set's hard-label accuracy, LRS their blend (in [0, 100], higher is better), ARS the blend of the "
             "improvements over random with and without augmentation (in [0, 100]; where both are scored: "
             "evaluate.augment).")


def augmentation_suffix(cfg: RunConfig) -> str:
    """What a protocol's name adds when its networks train without augmentation (evaluate.augment)."""
    return "" if cfg.evaluate.augment else ", without augmentation"


def _labels(cfg: RunConfig) -> str:
    e = cfg.evaluate
    plain = augmentation_suffix(cfg)
    if e.protocol_labels == "hard":
        return "hard labels" + plain
    return f"soft labels from {teacher_words(e.teacher)} at temperature {e.protocol_temperature:g}{plain}"


def teacher_words(t: TeacherConfig) -> str:
    """The teacher as a sentence names it."""
    if t.source == "torchvision":
        return f"{t.arch} ({t.weights})"
    return "the pool's best network" if t.pool is None else f"the best network of the pool at {t.pool}"


def protocol_line(cfg: RunConfig) -> str:
    """How the networks were trained: the named protocol and its settings (workers.training.protocols)."""
    e = cfg.evaluate
    if e.protocol == "paper":
        return f"Protocol paper (DM's): {e.protocol_epochs} epochs, SGD lr {e.protocol_lr}, batch {e.batch}, DSA, {_labels(cfg)}"
    augment = ("RDED's crops, flips, patch shuffling and CutMix" if e.protocol == "rded" else "CutMix") \
        if e.augment else "no augmentation"
    batch = "RDED's batch for the set's images per class" if e.protocol == "rded" else f"batch {e.batch}"
    source = "RDED's validation code" if e.protocol == "rded" else "DD-Ranking's soft-label track"
    return (f"Protocol {e.protocol} ({source}): {e.protocol_epochs} epochs, AdamW lr {e.protocol_lr} weight decay "
            f"{e.rule.weight_decay:g} on a quarter-cosine schedule, {batch}, {augment}, {_labels(cfg)}, KL not scaled")


def has_fair_scores(table: list[TableRow]) -> bool:
    return any(getattr(r, name) is not None for r in table for name in FAIR_SCORES)


def markdown_table(table: list[TableRow]) -> str:
    fair = has_fair_scores(table)
    head = "| method | model | protocol | networks | accuracy (%) | paper (%) |" + (
        "".join(f" {h} |" for h in FAIR_HEADS) if fair else "")
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for r in table:
        paper = f"{r.paper:.1f}" if r.paper is not None else "-"
        cells = f"| {r.label} | {r.model} | {r.protocol} | {r.n} | {r.mean:.2f} ± {r.std:.2f} | {paper} |"
        lines.append(cells + ("".join(f" {c} |" for c in r.fair) if fair else ""))
    return "\n".join(lines)


def report(run: RunDir, scores: list[Score]) -> list[TableRow]:
    """Write report.md, grid.png, loss.png (and sweep.png with scored checkpoints); return the table."""
    cfg, ds = run.config, run.dataset
    manifests = [m for spec in run.shards if (m := shard_state(run, spec, deep=False).manifest) is not None]
    table = results_table(scores, cfg, ds.name)
    walls = [m.wall_time_s for m in manifests]
    departure = departures(cfg)
    text = [
        f"# {cfg.name}",
        "",
        f"{len(run.shards)} shards, {len(run.record.classes)} classes of {ds.name}, "
        f"{cfg.condense.ipc} images per class stored and {cfg.condense.ipc * cfg.condense.factor**2} trained on "
        f"(factor {cfg.condense.factor}), {how_made(cfg)}.",
        f"Config hash `{run.record.config_hash}`.",
        *([departure] if departure else []),
        "",
        "## Accuracy on the real test split",
        "",
        markdown_table(table) if table else "(evaluation not run)",
        "",
        f"{protocol_line(cfg)}; mean ± std over networks. The paper column is Table 1 (ConvNet) where this setting is one "
        "of the paper's, and a recipe's own paper for its set on CIFAR-10; DM's paper trains 100 networks of 1000 "
        "epochs on images condensed for 20,000 iterations."
        + (" " + FAIR_NOTE if has_fair_scores(table) else ""),
        "",
        "## Timings",
        "",
        f"- shard wall time: total {sum(walls):.1f} s, mean {sum(walls) / max(len(walls), 1):.1f} s, "
        f"max {max(walls, default=0):.1f} s over {len(walls)} shards",
    ]
    if scores:
        per = sum(s.train_seconds for s in scores) / len(scores)
        text.append(f"- evaluation: {len(scores)} networks, {per:.2f} s of training each")
    shown = grid_classes(run.record.classes)
    curves = any(m.loss_curve for m in manifests)
    text += ["", "![synthetic images](grid.png)", "", *grid_index(shown, ds.class_names, len(run.record.classes)),
             *(["![loss per shard](loss.png)", ""] if curves else [])]
    pool = run.resolved.pool
    if pool is not None and pool.exists():
        s = pool.record.settings
        text += ["## The pool", "", f"{pool.networks} {s.model} networks trained {s.epochs} epoch(s) on the real "
                 f"training set ({pool.uri}); the validation accuracy of their kept states:", "",
                 "![pool accuracy histogram](pool.png)", ""]
        storage.write_bytes_atomic(run.path("pool.png"), histogram_png(pool))
    sweep = sweep_points(table, cfg.condense.iterations)
    if sweep:
        text += ["## Iteration sweep", "", "Images of the kept checkpoints (`condense.keep_checkpoints`), "
                 "scored with the protocol above.", "", "![accuracy per iteration](sweep.png)", ""]
        storage.write_bytes_atomic(run.path("sweep.png"), sweep_png(sweep, table))
    storage.write_bytes_atomic(run.path("report.md"), "\n".join(text).encode())
    x, y = grid_images(run, shown)
    storage.write_bytes_atomic(run.path("grid.png"), grid_png(x, y, ds.mean, ds.std,
                                                              cfg.condense.ipc * cfg.condense.factor**2, shown))
    if curves:
        storage.write_bytes_atomic(run.path("loss.png"), loss_png(manifests, loss_name(cfg.condense)))
    else:  # an earlier report's curves are not this run's
        storage.remove(run.path("loss.png"))
    return table


def pictures(run: RunDir) -> str:
    """The pictures report() draws beside report.md, as they are there: grid.png, and loss.png
    where a shard has a loss curve (RDED selects and a set of 0 iterations starts: neither has)."""
    return "grid.png, loss.png" if storage.exists(run.path("loss.png")) else "grid.png"


def grid_classes(classes: Sequence[int], most: int = GRID_CLASSES) -> list[int]:
    """The classes grid.png shows: every one when they fit, else ``most`` of them spread evenly from
    the first to the last, so that the picture stays readable at any class count."""
    ordered = sorted(set(classes))
    if len(ordered) <= most:
        return ordered
    return [ordered[round(i * (len(ordered) - 1) / (most - 1))] for i in range(most)]


def grid_index(shown: Sequence[int], names: Sequence[str], total: int) -> list[str]:
    """report.md's lines naming grid.png's rows, when it shows a sample of the classes."""
    if len(shown) == total:
        return []
    lines = [f"grid.png shows {len(shown)} of {total:,} classes, evenly spaced; its rows, top to bottom:", "",
             "| row | class | name |", "|---|---|---|"]
    return lines + [f"| {row} | {c} | {names[c]} |" for row, c in enumerate(shown, start=1)] + [""]


def grid_images(run: RunDir, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored images of ``classes``, read (and hashed once, as they are read) from the shards
    that hold them alone: the driver never loads the whole set to draw a sample of it."""
    wanted = set(classes)
    specs = [spec for spec in run.shards if wanted.intersection(spec.class_ids)]
    files = committed_files(run, "dm", specs, deep=False)
    try:
        return load(run, TrainingSet("dm", run.record.units_key, files=files, factor=run.config.condense.factor))
    except CorruptFile:  # the deep check names the shard and the command that mends it
        committed_files(run, "dm", specs)
        raise


def grid_png(images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
             ipc: int, classes: Sequence[int], max_per_class: int = 20, min_side: int = 32) -> bytes:
    """``classes`` as rows, their images as columns, in pixel space (small images enlarged)."""
    from torchvision.utils import save_image  # here: its import costs seconds that status and export never need

    shown = torch.isin(labels, torch.tensor(list(classes), dtype=labels.dtype))
    images, labels = images[shown], labels[shown]
    pixels = denormalize(images, mean, std)
    side = pixels.shape[-1]
    if side < min_side:  # 8x8 digits would be specks
        pixels = F.interpolate(pixels, scale_factor=math.ceil(min_side / side), mode="nearest")
    cols = min(ipc, max_per_class)
    rows = []
    for c in classes:
        members = pixels[labels == c][:cols]
        blank = members.new_ones((cols - len(members), *members.shape[1:]))
        rows.append(torch.cat([members, blank]))
    buf = io.BytesIO()
    save_image(torch.cat(rows), buf, nrow=cols, padding=2, pad_value=1.0, format="png")
    return buf.getvalue()


def iteration_points(table: list[TableRow], iterations: int) -> list[tuple[int, str, float, float]]:
    """(iteration, model, mean, std) of dm@<it> rows and of the final dm row (at ``iterations``)."""
    points = [(it, r.model, r.mean, r.std) for r in table if (it := snapshot_iteration(r.method)) is not None]
    points += [(iterations, r.model, r.mean, r.std) for r in table if r.method == "dm"]
    return sorted(points)


def sweep_points(table: list[TableRow], iterations: int) -> list[tuple[int, str, float, float]]:
    """The points of the report's sweep plot; [] without snapshots (a final row alone is no sweep)."""
    if not any(snapshot_iteration(r.method) is not None for r in table):
        return []
    return iteration_points(table, iterations)


def sweep_png(points: list[tuple[int, str, float, float]], table: list[TableRow]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in sorted({p[1] for p in points}):
        its, means, stds = zip(*[(p[0], p[2], p[3]) for p in points if p[1] == model])
        ax.errorbar(its, means, yerr=stds, marker="o", capsize=3, label=f"DM, {model}")
        for r in table:  # baselines as flat lines for scale
            if r.model == model and r.method != "dm" and snapshot_iteration(r.method) is None:
                ax.axhline(r.mean, linestyle="--", linewidth=0.8, color="grey")
                ax.annotate(r.method, (its[0], r.mean), fontsize=7, color="grey")
            if r.model == model and r.method == "dm" and r.paper is not None:
                ax.axhline(r.paper, linestyle=":", color="black", linewidth=0.8)
                ax.annotate("paper (20,000 it)", (its[0], r.paper), fontsize=7)
    ax.set_xlabel("DM iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title("accuracy of the synthetic set along the run")
    return png(fig)


@dataclass(frozen=True)
class LossSpread:
    """The shards' smoothed loss curves on one iteration grid, where there are too many to draw."""

    iterations: list[float]
    low: list[float]  # 10th percentile of the shards
    median: list[float]
    high: list[float]  # 90th percentile
    shards: int


def loss_spread(manifests: Sequence[ShardManifest], points: int = 200) -> LossSpread:
    grid = np.linspace(0, max(m.loss_curve[-1][0] for m in manifests), points)
    smoothed = np.stack([np.interp(grid, [p[0] for p in m.loss_curve], _smoothed(m)) for m in manifests])
    low, median, high = np.percentile(smoothed, [10, 50, 90], axis=0)
    return LossSpread(grid.tolist(), low.tolist(), median.tolist(), high.tolist(), len(manifests))


def loss_name(c: CondenseConfig) -> str:
    """What a run's loss curves measure: the matching loss its recipe or method minimises."""
    if c.method == "mmd_pixel":
        return f"pixel MMD ({c.kernel} kernel)"
    name = {"mean": "DM loss", "mmd": f"MMD ({c.kernel} kernel)", "cfd": "characteristic-function distance"}[c.loss]
    return name + (" + cross-entropy" if c.ce_weight > 0 else "")


def loss_png(manifests: list[ShardManifest], name: str) -> bytes:
    """One curve per shard, raw and smoothed; beyond LOSS_CURVES shards, their median and the band
    of their 10th to 90th percentiles (a thousand curves would show nothing). ``name``: loss_name."""
    curved = [m for m in manifests if m.loss_curve]  # a shard of 0 iterations has no curve
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(curved) > LOSS_CURVES:
        spread = loss_spread(curved)
        ax.fill_between(spread.iterations, spread.low, spread.high, alpha=0.3,
                        label="10th-90th percentile of the shards")
        ax.plot(spread.iterations, spread.median, linewidth=1.2, label=f"median of {spread.shards} shards")
    else:
        for m in curved:
            its, vals = [p[0] for p in m.loss_curve], [p[1] for p in m.loss_curve]
            line, = ax.plot(its, vals, linewidth=0.6, alpha=0.3)  # raw: one random network per point
            ax.plot(its, _smoothed(m), linewidth=1.2, color=line.get_color(), label=f"shard {m.shard_id}")
    ax.set_xlabel("iteration")
    ax.set_ylabel(name)
    ax.set_yscale("log")
    if curved:
        ax.legend(fontsize=6)
    ax.set_title(f"{name} per shard" if len(curved) <= LOSS_CURVES else f"{name} across {len(curved):,} shards")
    return png(fig)


def _smoothed(m: ShardManifest) -> list[float]:
    vals = [p[1] for p in m.loss_curve]
    return _moving_average(vals, max(1, len(vals) // 20))


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out
