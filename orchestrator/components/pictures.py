"""The pictures of committed results, drawn beside them (the artifacts hold only data): the
pool's accuracy histogram, the NAS proxies against the whole set, continual learning's curves."""

from __future__ import annotations

from orchestrator import storage
from orchestrator.artifacts.continual_results import StepScore, curves
from orchestrator.artifacts.nas_results import WHOLE, NasScore
from orchestrator.artifacts.pool_networks import accuracies
from orchestrator.figures import plt, png
from orchestrator.pool_dir import PoolDir
from orchestrator.run_dir import RunDir


def draw_pool(pool: PoolDir) -> None:
    """POOL/pool.png: the validation accuracy of every kept state."""
    storage.write_bytes_atomic(pool.histogram(), histogram_png(pool))


def draw_nas(run: RunDir, scores: list[NasScore]) -> None:
    """RUN/nas/proxy-vs-whole.png."""
    storage.write_bytes_atomic(run.path("nas", "proxy-vs-whole.png"), scatter_png(scores))


def draw_continual(run: RunDir, scores: list[StepScore]) -> None:
    """RUN/continual/accuracy.png: accuracy against classes seen, per method."""
    storage.write_bytes_atomic(run.path("continual", "accuracy.png"), curves_png(scores))


def histogram_png(pool: PoolDir) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(accuracies(pool), bins=list(range(0, 101, 5)), color="tab:blue", edgecolor="white")
    ax.set_xlabel("validation accuracy of a kept state (%)")
    ax.set_ylabel("states")
    s = pool.record.settings
    ax.set_title(f"pool of {pool.networks} x {s.model}, {s.epochs} epoch(s), a state every {s.states_every} steps",
                 fontsize=9)
    return png(fig)


def scatter_png(scores: list[NasScore]) -> bytes:
    whole = {s.architecture: 100 * s.accuracy for s in scores if s.proxy == WHOLE}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for proxy in dict.fromkeys(s.proxy for s in scores if s.proxy != WHOLE):
        mine = [s for s in scores if s.proxy == proxy and s.architecture in whole]
        ax.scatter([100 * s.accuracy for s in mine], [whole[s.architecture] for s in mine], s=12, label=proxy,
                   alpha=0.7)
    ax.set_xlabel("validation accuracy after proxy training (%)")
    ax.set_ylabel("validation accuracy after whole-set training (%)")
    ax.set_title("NAS: each point an architecture", fontsize=9)
    ax.legend(fontsize=8)
    return png(fig)


def curves_png(scores: list[StepScore]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4))
    points = curves(scores)
    for method in dict.fromkeys(p.method for p in points):
        mine = [p for p in points if p.method == method]
        ax.errorbar([p.classes_seen for p in mine], [p.mean for p in mine], yerr=[p.std for p in mine],
                    marker="o", capsize=3, label=method)
    ax.set_xlabel("classes seen")
    ax.set_ylabel("test accuracy on the classes seen (%)")
    ax.set_title("class-incremental: networks trained on the memory alone", fontsize=10)
    ax.legend(fontsize=8)
    return png(fig)
