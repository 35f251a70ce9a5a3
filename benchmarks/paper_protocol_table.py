"""The table that ends benchmarks/paper_protocol.sh: each run's synthetic set against its paper.

    python benchmarks/paper_protocol_table.py OUT      # OUT holds the runs dm, m3d, idm, dance, ncfm

One row per run directory found (a missing or unscored run is a row that says so), read from the
run itself: its scores (eval/results.parquet) summarised as its report summarises them, its
iterations and evaluation, and the paper's figure (orchestrator/report.py: Table 1 for DM, the
recipe's own paper for a recipe), so the distance to the paper is one subtraction. The baselines
of DM's run follow as their own rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.artifacts.scores import read_results
from orchestrator.report import TableRow, results_table
from orchestrator.run_dir import RunDir
from orchestrator.run_opening import opened

RUNS = ("dm", "m3d", "idm", "dance", "ncfm")
HEAD = "| set | iterations | networks x epochs | accuracy (%) | paper (%) | distance |"


def row_cells(row: TableRow, run: RunDir) -> str:
    c, e = run.config.condense, run.config.evaluate
    paper = "-" if row.paper is None else f"{row.paper:.1f}"
    distance = "-" if row.paper is None else f"{row.mean - row.paper:+.2f}"
    its = c.iterations if row.method == "dm" else "-"
    return f"| {row.label} | {its} | {row.n} x {e.protocol_epochs} | {row.mean:.2f} ± {row.std:.2f} | {paper} | {distance} |"


def table(out: Path) -> list[str]:
    lines = [HEAD, "|---" * HEAD.count(" | ") + "|---|"]
    for name in RUNS:
        if not RunDir.exists(str(out / name)):
            lines.append(f"| {name} | not run | | | | |")
            continue
        run = opened(str(out / name))
        rows = [r for r in results_table(read_results(run), run.config, run.dataset.name) if r.model == "ConvNet"]
        if not rows:
            lines.append(f"| {name} | not scored (`dmcondense resume {out / name}`) | | | | |")
        lines += [row_cells(r, run) for r in rows if r.method == "dm" or (name == "dm" and "@" not in r.method)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder benchmarks/paper_protocol.sh wrote")
    print("\n".join(table(parser.parse_args().out)))


if __name__ == "__main__":
    main()
