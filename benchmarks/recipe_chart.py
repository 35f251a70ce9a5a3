"""CIFAR-10 at 10 images per class: each recipe after 400 iterations beside its paper's figure and
its factor-2 start, drawn from docs/fidelity.md's table.

    .venv/bin/python benchmarks/recipe_chart.py --out docs/figures/cifar10-recipes.png

The bars run in the papers' order (NCFM >= DANCE >= M3D >= IDM >= DM), so a bar longer than the one
above it is a place where the order does not hold here. The figures are read from the table by row
number; `tests/test_recipe_chart.py` checks that every row named here is the recipe, setting and
protocol its bar says.
"""
from __future__ import annotations

from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from benchmarks.fidelity_chart import TableRow, write_chart
from orchestrator.figures import plt

RECIPES = (("NCFM", 162), ("DANCE", 163), ("M3D", 156), ("IDM", 176), ("DM", 174))  # (name, row)
START = 157  # the recipes' factor-2 start, scored at 0 iterations


def draw(table: dict[int, TableRow], recipes: tuple[tuple[str, int], ...] = RECIPES,
         start: int = START) -> plt.Figure:
    """A bar per recipe with its paper's figure as a mark and the start as a line; a row that the
    chart names and the table lacks raises KeyError."""
    fig, ax = plt.subplots(figsize=(7.5, 1.9 + 0.42 * len(recipes)))
    for y, (name, number) in enumerate(recipes):
        row = table[number]
        ax.barh(y, row.mean, height=0.6, xerr=row.std, color="tab:blue", capsize=2)
        ax.text(1.0, y, f"{row.mean:.2f} ± {row.std:.2f} (row {number})", va="center", fontsize=7,
                color="white")  # inside the bar: the paper's mark past its end stays clear
        if row.paper is not None:
            ax.plot(row.paper, y, marker="|", markersize=14, color="black", gid="paper")
    ax.axvline(table[start].mean, linestyle="--", color="grey", gid="start")
    ax.set_yticks(range(len(recipes)), [name for name, _ in recipes])
    ax.invert_yaxis()
    ax.set_xlim(0, 85)
    ax.legend(handles=[Patch(color="tab:blue", label="here, 400 iterations"),
                       Line2D([], [], marker="|", linestyle="", markersize=10, color="black",
                              label="its paper's figure"),
                       Line2D([], [], linestyle="--", color="grey",
                              label=f"the factor-2 start, 0 iterations (row {start})")],
              loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3, fontsize=8)
    ax.set_xlabel("test accuracy (%), ConvNet, hard labels, DSA, 2 networks x 300 epochs, mean ± std")
    fig.suptitle("CIFAR-10, 10 images per class: the recipes against their papers", fontsize=10)
    return fig


def main() -> None:
    write_chart(draw, "docs/figures/cifar10-recipes.png", __doc__)


if __name__ == "__main__":
    main()
