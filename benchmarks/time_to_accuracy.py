"""Accuracy of a condensed set against the wall time of condensation (the paper's Figure 4 question).

    python benchmarks/time_to_accuracy.py --target 48.9 --reference-s-per-it 3.33 \\
        --curve DM=dm-sweep.csv --timing DM=t-dm10,t-dm40 \\
        --curve DANCE=RUN --timing DANCE=t-dance10,t-dance40 --out time-to-accuracy.png

A curve joins comma-separated sources: run directories scored along their checkpoints
(``dmcondense evaluate RUN --snapshots``: the dm@<it> rows and the final row, first model; a run
of 0 iterations gives the start) or CSV files of ``iteration,mean,std`` rows (a sweep whose run
directory is gone). Its time axis comes from two
timing runs of the same config that differ only in condense.iterations, made on an otherwise
idle machine: their shards' wall times give the seconds per iteration (the slope) and the fixed
cost of a shard (data, pool and network set-up: the intercept). A recipe that reads pool networks
is charged the pool's training time too (the sum of its networks' wall times), since a user
has to train it first. The yardstick is the authors' per-class loop: its seconds per iteration
here (``dmcondense bench``, the reference row) times the paper's iterations; the goal line is a
fraction of that.
"""
from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from orchestrator.artifacts.pool_networks import network_state  # noqa: E402
from orchestrator.artifacts.scores import read_results  # noqa: E402
from orchestrator.artifacts.shards import shard_state  # noqa: E402
from orchestrator.report import iteration_points, results_table  # noqa: E402
from orchestrator.run_dir import RunDir  # noqa: E402
from orchestrator.run_opening import opened  # noqa: E402


@dataclass(frozen=True)
class Point:
    iteration: int
    mean: float  # test accuracy, percent
    std: float


@dataclass(frozen=True)
class Timing:
    s_per_it: float
    setup_s: float  # a shard's fixed cost
    pool_s: float  # training the pool the recipe reads (0: none)

    def seconds(self, iteration: int) -> float:
        return self.pool_s + self.setup_s + self.s_per_it * iteration


def run_points(run: RunDir) -> list[Point]:
    """The sweep of a run scored with --snapshots (and its final set) for its first model."""
    table = results_table(read_results(run), run.config, run.dataset.name)
    points = iteration_points(table, run.config.condense.iterations)
    if not points:
        raise SystemExit(f"{run.uri} holds no scores of its set: score it with dmcondense evaluate {run.uri} --snapshots")
    model = points[0][1]
    return [Point(it, mean, std) for it, m, mean, std in points if m == model]


def csv_points(path: str) -> list[Point]:
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))]
    missing = {"iteration", "mean", "std"} - set(rows[0] if rows else {})
    if missing:
        raise SystemExit(f"{path}: needs the columns iteration,mean,std (missing {', '.join(sorted(missing))})")
    return sorted((Point(int(r["iteration"]), float(r["mean"]), float(r["std"])) for r in rows),
                  key=lambda p: p.iteration)


def curve(sources: str) -> list[Point]:
    """One curve from comma-separated sources (a run of 0 iterations beside its sweep, say)."""
    points = [p for src in sources.split(",")
              for p in (csv_points(src) if src.endswith(".csv") else run_points(opened(src)))]
    return sorted(points, key=lambda p: p.iteration)


def shard_wall(run: RunDir) -> float:
    manifests = [shard_state(run, spec, deep=False).manifest for spec in run.shards]
    if len(manifests) != 1 or manifests[0] is None:
        raise SystemExit(f"{run.uri}: a timing run is one committed shard (plan.classes_per_shard = all classes)")
    return manifests[0].wall_time_s


def pool_seconds(run: RunDir) -> float:
    if run.config.condense.networks == "random":
        return 0.0
    pool = run.resolved.pool_dir
    walls = [st.manifest.wall_time_s for i in range(run.config.pool.networks)
             if (st := network_state(pool, i, deep=False)).manifest is not None]
    return sum(walls)  # an upper bound when the networks trained side by side


def fit(short: tuple[int, float], long: tuple[int, float], pool_s: float = 0.0) -> Timing:
    """Seconds per iteration and a shard's fixed cost from two (iterations, wall seconds) runs."""
    (n_short, wall_short), (n_long, wall_long) = short, long
    if n_long <= n_short:
        raise SystemExit(f"timing runs of {n_short} and {n_long} iterations: give the shorter run first, "
                         "then a longer one")
    slope = (wall_long - wall_short) / (n_long - n_short)
    return Timing(slope, wall_short - slope * n_short, pool_s)


def timing(short_uri: str, long_uri: str) -> Timing:
    short, long = opened(short_uri), opened(long_uri)
    return fit((short.config.condense.iterations, shard_wall(short)),
               (long.config.condense.iterations, shard_wall(long)), pool_seconds(long))


def first_reaching(points: list[Point], t: Timing, target: float) -> float | None:
    return next((t.seconds(p.iteration) for p in points if p.mean >= target), None)


def plot(series: dict[str, tuple[list[Point], Timing]], target: float, goal_s: float, reference_s: float) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, (points, t) in series.items():
        ax.errorbar([t.seconds(p.iteration) / 60 for p in points], [p.mean for p in points],
                    yerr=[p.std for p in points], marker="o", capsize=3, label=name)
    ax.axhline(target, linestyle=":", color="black", linewidth=0.8)
    ax.annotate(f"target {target}", (ax.get_xlim()[0], target), fontsize=7)
    ax.axvline(goal_s / 60, linestyle="--", color="grey", linewidth=0.8)
    ax.annotate(f"goal: 1/{reference_s / goal_s:.0f} of the authors' loop\n({reference_s / 3600:.1f} h here)",
                (goal_s / 60, ax.get_ylim()[0]), fontsize=7, color="grey", ha="right", va="bottom")
    ax.set_xlabel("wall time of condensation on this machine (min)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title("accuracy against condensation time")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag} {item}: write NAME=VALUE")
        out[name] = value
    return out


def run_pair(name: str, value: str) -> tuple[str, str]:
    short, sep, long = value.partition(",")
    if not sep or not short or not long:
        raise SystemExit(f"--timing {name}={value}: write NAME=SHORT_RUN,LONG_RUN (two timing runs)")
    return short, long


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--curve", action="append", default=[], help="NAME=SOURCE[,SOURCE]: run directories or FILE.csv")
    parser.add_argument("--timing", action="append", default=[], help="NAME=SHORT_RUN,LONG_RUN")
    parser.add_argument("--target", type=float, required=True, help="accuracy to reach, percent")
    parser.add_argument("--reference-s-per-it", type=float, required=True,
                        help="the authors' loop here: dmcondense bench, its reference row")
    parser.add_argument("--reference-iterations", type=int, default=20_000)
    parser.add_argument("--fraction", type=float, default=0.1, help="the goal as a fraction of the reference time")
    parser.add_argument("--out", default="time-to-accuracy.png")
    args = parser.parse_args()
    curves, timings = pairs(args.curve, "--curve"), pairs(args.timing, "--timing")
    if set(curves) != set(timings):
        raise SystemExit(f"every curve needs a timing and back: curves {sorted(curves)}, timings {sorted(timings)}")
    series = {name: (curve(src), timing(*run_pair(name, timings[name]))) for name, src in curves.items()}
    reference_s = args.reference_s_per_it * args.reference_iterations
    goal_s = args.fraction * reference_s
    print(f"authors' loop: {args.reference_s_per_it:.2f} s/it x {args.reference_iterations} it = {reference_s:,.0f} s;"
          f" goal: {args.target} within {goal_s:,.0f} s")
    print("series | s/it | set-up s | pool s | iteration: s -> accuracy | first reaching the target")
    for name, (points, t) in series.items():
        trail = ", ".join(f"{p.iteration}: {t.seconds(p.iteration):,.0f} s -> {p.mean:.2f}" for p in points)
        reached = first_reaching(points, t, args.target)
        verdict = "not reached" if reached is None else (
            f"{reached:,.0f} s = {reached / reference_s:.3f} of the authors' loop")
        print(f"{name} | {t.s_per_it:.2f} | {t.setup_s:.0f} | {t.pool_s:.0f} | {trail} | {verdict}")
    with open(args.out, "wb") as f:
        f.write(plot(series, args.target, goal_s, reference_s))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
