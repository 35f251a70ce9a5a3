"""The run report: report.md (accuracy table, the paper's figure, timings), grid.png, loss.png."""

from __future__ import annotations

import io
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from orchestrator import shards, storage  # noqa: E402
from orchestrator.config import RunConfig  # noqa: E402
from orchestrator.eval_scores import snapshot_iteration, summarize  # noqa: E402
from orchestrator.plan import ShardSpec  # noqa: E402
from workers.data import denormalize  # noqa: E402

# Table 1 of the paper, ConvNet, mean accuracy (%): dataset -> method -> ipc -> accuracy.
PAPER_TABLE1: dict[str, dict[str, dict[int, float]]] = {
    "mnist": {"dm": {1: 89.7, 10: 97.5, 50: 98.6}, "random": {1: 64.9, 10: 95.1, 50: 97.9},
              "herding": {1: 89.2, 10: 93.7, 50: 94.8}},
    "cifar10": {"dm": {1: 26.0, 10: 48.9, 50: 63.0}, "random": {1: 14.4, 10: 26.0, 50: 43.4},
                "herding": {1: 21.5, 10: 31.6, 50: 40.4}},
    "cifar100": {"dm": {1: 11.4, 10: 29.7, 50: 43.6}, "random": {1: 4.2, 10: 14.6, 50: 30.0},
                 "herding": {1: 8.4, 10: 17.3, 50: 33.7}},
    "tinyimagenet": {"dm": {1: 3.9, 10: 12.9, 50: 24.1}, "random": {1: 1.4, 10: 5.0, 50: 15.0},
                     "herding": {1: 2.8, 10: 6.3, 50: 16.7}},
    "imagenet": {"dm": {1: 1.3, 10: 5.7, 50: 11.4}, "random": {1: 0.52, 10: 1.94, 50: 7.54}},
}


def paper_figure(dataset: str, method: str, ipc: int, model: str) -> float | None:
    if model not in ("ConvNet", "ConvNetD4"):
        return None
    return PAPER_TABLE1.get(dataset, {}).get(method, {}).get(ipc)


def results_table(rows: list[dict[str, Any]], dataset: str, ipc: int) -> list[dict[str, Any]]:
    out = []
    for s in summarize(rows):
        out.append({**s, "paper": paper_figure(dataset, s["method"], ipc, s["model"])})
    return out


def markdown_table(table: list[dict[str, Any]]) -> str:
    lines = ["| method | model | networks | accuracy (%) | paper (%) |", "|---|---|---|---|---|"]
    for r in table:
        paper = f"{r['paper']:.1f}" if r["paper"] is not None else "-"
        lines.append(f"| {r['method']} | {r['model']} | {r['n']} | {r['mean']:.2f} ± {r['std']:.2f} | {paper} |")
    return "\n".join(lines)


def write_report(run: str, record: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    cfg = RunConfig.model_validate(record["config"])
    plan = [ShardSpec.from_dict(d) for d in record["plan"]["shards"]]
    manifests = [shards.verify(run, s, deep=False).manifest for s in plan]
    manifests = [m for m in manifests if m]
    ds = record["dataset"]
    table = results_table(rows, ds["name"], cfg.condense.ipc)
    walls = [m["wall_time_s"] for m in manifests]
    text = [
        f"# {cfg.name}",
        "",
        f"{len(plan)} shards, {sum(len(s.class_ids) for s in plan)} classes of {ds['name']}, "
        f"{cfg.condense.ipc} images per class, {cfg.condense.iterations} iterations of DM with {cfg.condense.model}.",
        f"Config hash `{record['config_hash']}`.",
        "",
        "## Accuracy on the real test split",
        "",
        markdown_table(table) if table else "(evaluation not run)",
        "",
        f"Protocol: {cfg.evaluate.epochs} epochs, SGD lr {cfg.evaluate.lr}, batch {cfg.evaluate.batch}, DSA; "
        "mean ± std over networks. The paper column is Table 1 (ConvNet) where this setting is one of the paper's; "
        "the paper trains 100 networks of 1000 epochs on images condensed for 20,000 iterations.",
        "",
        "## Timings",
        "",
        f"- shard wall time: total {sum(walls):.1f} s, mean {sum(walls) / max(len(walls), 1):.1f} s, "
        f"max {max(walls, default=0):.1f} s over {len(walls)} shards",
    ]
    if rows:
        per = sum(r["train_seconds"] for r in rows) / len(rows)
        text.append(f"- evaluation: {len(rows)} networks, {per:.2f} s of training each")
    text += ["", "![synthetic images](grid.png)", "", "![loss per shard](loss.png)", ""]
    sweep = sweep_points(table, cfg.condense.iterations)
    if sweep:
        text += ["## Iteration sweep", "", "Images of the kept checkpoints (`condense.keep_checkpoints`), "
                 "scored with the protocol above.", "", "![accuracy per iteration](sweep.png)", ""]
        storage.write_bytes_atomic(storage.join(run, "sweep.png"), sweep_png(sweep, table))
    storage.write_bytes_atomic(storage.join(run, "report.md"), "\n".join(text).encode())
    x, y = shards.load_method(run, plan, "dm")
    storage.write_bytes_atomic(storage.join(run, "grid.png"), grid_png(x, y, ds["mean"], ds["std"], cfg.condense.ipc))
    storage.write_bytes_atomic(storage.join(run, "loss.png"), loss_png(manifests))


def grid_png(images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
             ipc: int, max_classes: int = 100) -> bytes:
    """Classes as rows, their ipc images as columns, in pixel space."""
    pixels = denormalize(images, mean, std)
    classes = torch.unique(labels)[:max_classes]
    cols = min(ipc, 20)
    fig, axes = plt.subplots(len(classes), cols, figsize=(cols * 0.9, len(classes) * 0.9), squeeze=False)
    for r, c in enumerate(classes.tolist()):
        rows = pixels[labels == c]
        for k in range(cols):
            ax = axes[r][k]
            ax.axis("off")
            if k < len(rows):
                img = rows[k].permute(1, 2, 0).numpy()
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(str(c), fontsize=6, loc="left")
    return _png(fig)


def sweep_points(table: list[dict[str, Any]], iterations: int) -> list[tuple[int, str, float, float]]:
    """(iteration, model, mean, std) of dm@<it> rows and of the final dm row; [] without snapshots."""
    points = [(it, r["model"], r["mean"], r["std"]) for r in table
              if (it := snapshot_iteration(r["method"])) is not None]
    if not points:
        return []
    points += [(iterations, r["model"], r["mean"], r["std"]) for r in table if r["method"] == "dm"]
    return sorted(points)


def sweep_png(points: list[tuple[int, str, float, float]], table: list[dict[str, Any]]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in sorted({p[1] for p in points}):
        its, means, stds = zip(*[(p[0], p[2], p[3]) for p in points if p[1] == model])
        ax.errorbar(its, means, yerr=stds, marker="o", capsize=3, label=f"DM, {model}")
        for r in table:  # baselines as flat lines for scale
            if r["model"] == model and r["method"] in ("random", "herding", "k_center"):
                ax.axhline(r["mean"], linestyle="--", linewidth=0.8, color="grey")
                ax.annotate(r["method"], (its[0], r["mean"]), fontsize=7, color="grey")
            if r["model"] == model and r["method"] == "dm" and r.get("paper") is not None:
                ax.axhline(r["paper"], linestyle=":", color="black", linewidth=0.8)
                ax.annotate("paper (20,000 it)", (its[0], r["paper"]), fontsize=7)
    ax.set_xlabel("DM iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title("accuracy of the synthetic set along the run")
    return _png(fig)


def loss_png(manifests: list[dict[str, Any]]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in manifests:
        curve = m.get("loss_curve") or []
        if curve:
            its, vals = [p[0] for p in curve], [p[1] for p in curve]
            line, = ax.plot(its, vals, linewidth=0.6, alpha=0.3)  # raw: one random network per point
            ax.plot(its, _moving_average(vals, max(1, len(vals) // 20)), linewidth=1.2, color=line.get_color(),
                    label=f"shard {m['shard_id']}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("DM loss")
    ax.set_yscale("log")
    if 0 < len(manifests) <= 12:
        ax.legend(fontsize=6)
    ax.set_title("distribution matching loss per shard")
    return _png(fig)


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
