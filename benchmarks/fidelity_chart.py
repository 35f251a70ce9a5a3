"""CIFAR-10 sets under the two evaluation protocols, drawn from docs/fidelity.md's table.

    .venv/bin/python benchmarks/fidelity_chart.py --out docs/figures/cifar10-protocols.png

One panel per images-per-class setting; per set, its accuracy under RDED's protocol (soft
labels from the project's teacher trained again) and under DM's paper protocol (hard labels,
DSA), with the std over networks as error bars and each paper's own figure as a mark. The
figures are read from the table by row number, so the picture can only show what the table
states; `tests/test_fidelity_chart.py` checks that every row named here is the set, setting
and protocol its bar says.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from orchestrator.figures import plt

FIDELITY = Path(__file__).resolve().parent.parent / "docs" / "fidelity.md"
FIGURE = re.compile(r"(\d+\.\d+) ± (\d+\.\d+)")
SERIES = (("rded_row", "RDED's protocol (teacher's soft labels)", "tab:orange", -0.2),
          ("paper_row", "DM's paper protocol (hard labels, DSA)", "tab:blue", 0.2))


@dataclass(frozen=True)
class TableRow:
    """One row of the table: the cells a chart needs."""

    number: int
    dataset: str
    method: str
    ipc: int
    mean: float
    std: float
    paper: float | None
    evaluation: str  # networks x epochs
    labels: str


@dataclass(frozen=True)
class Bar:
    """A set in a panel: its row under RDED's protocol and under the paper's (None: not scored)."""

    name: str
    rded_row: int | None
    paper_row: int | None


@dataclass(frozen=True)
class Panel:
    ipc: int
    bars: tuple[Bar, ...]


PANELS = (
    Panel(10, (Bar("NCFM", 164, 162), Bar("DANCE", None, 163), Bar("DM", 167, 174),
               Bar("random", 165, 145), Bar("RDED", 166, 175))),
    Panel(1, (Bar("DM", 172, 173), Bar("random", 169, 171), Bar("RDED", 168, 170))),
)


def table_cells(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows (as stripped cells) of the table under "## Every cell measured"."""
    section = text.split("\n## Every cell measured\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]


def read_table(text: str) -> dict[int, TableRow]:
    """The table's rows with a mean ± std figure, by their number."""
    header, rows = table_cells(text)
    col = {name: header.index(name) for name in
           ("#", "data set", "method", "images per class", "ours (%)", "paper (%)", "networks x epochs", "labels")}
    table = {}
    for r in rows:
        figure = FIGURE.search(r[col["ours (%)"]])
        if figure is None:
            continue
        paper = re.match(r"\d+\.\d+", r[col["paper (%)"]])  # "65.2 at 50": another setting's figure
        paper_here = paper is not None and paper.end() == len(r[col["paper (%)"]])
        table[int(r[col["#"]])] = TableRow(
            int(r[col["#"]]), r[col["data set"]], r[col["method"]], int(r[col["images per class"]]),
            float(figure[1]), float(figure[2]), float(paper[0]) if paper_here else None,
            r[col["networks x epochs"]], r[col["labels"]])
    return table


def draw(table: dict[int, TableRow], panels: tuple[Panel, ...] = PANELS) -> plt.Figure:
    """Horizontal bar pairs per set, one panel per images-per-class setting; a row that a bar
    names and the table lacks raises KeyError."""
    heights = [len(p.bars) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 1.0 + 0.62 * sum(heights)),
                             gridspec_kw={"height_ratios": heights}, sharex=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        _draw_panel(ax, table, panel)
    legend = [Patch(color=colour, label=label) for _, label, colour, _ in SERIES]
    legend.append(Line2D([], [], marker="|", linestyle="", markersize=10, color="black", label="its paper's figure"))
    axes[-1, 0].legend(handles=legend, loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("test accuracy (%), ConvNet, 2 networks x 300 epochs, mean ± std")
    fig.suptitle("CIFAR-10: the same sets under two evaluation protocols", fontsize=10)
    return fig


def _draw_panel(ax: plt.Axes, table: dict[int, TableRow], panel: Panel) -> None:
    for y, bar in enumerate(panel.bars):
        for attr, _, colour, dy in SERIES:
            number = getattr(bar, attr)
            if number is None:
                ax.text(0.5, y + dy, "not scored", va="center", fontsize=7, color="grey")
                continue
            row = table[number]  # a row the table lacks is an error in PANELS, not "not scored"
            ax.barh(y + dy, row.mean, height=0.38, xerr=row.std, color=colour, capsize=2)
            ax.text(row.mean + row.std + 0.6, y + dy, f"{row.mean:.1f} (row {number})", va="center", fontsize=7,
                    zorder=3, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.3})  # over the paper marks
        papers = {table[n].paper for n in (bar.rded_row, bar.paper_row) if n in table and table[n].paper}
        for value in papers:
            ax.plot(value, y, marker="|", markersize=14, color="black")
    ax.set_yticks(range(len(panel.bars)), [b.name for b in panel.bars])
    ax.invert_yaxis()
    ax.set_xlim(0, 85)
    ax.set_title(f"{panel.ipc} image{'s' if panel.ipc > 1 else ''} per class", fontsize=9, loc="left")


def write_chart(draw_table: Callable[[dict[int, TableRow]], plt.Figure], default_out: str, doc: str) -> None:
    """The command line of a chart drawn from the table: the picture written to --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(default_out))
    args = parser.parse_args()
    fig = draw_table(read_table(FIDELITY.read_text()))
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def main() -> None:
    write_chart(draw, "docs/figures/cifar10-protocols.png", __doc__)


if __name__ == "__main__":
    main()
