"""Equivalence of two run directories: the same shard bytes, baseline selections and scores.

    .venv/bin/python benchmarks/compare_runs.py RUN_BEFORE RUN_AFTER

Made for consolidations that must not change behaviour: run one config at the commit
before and at the commit after (each in its own run directory), then compare. It reads the
committed files themselves (their sha256, not the manifests' claims) and every score of
``eval/results.parquet`` keyed by (method, model, seed). Where a file's bytes differ it says
whether its rows differ or only its metadata (a new config key changes the config hash a
shard records, not its images). Prints one line per difference and a summary; exits 0 when
both runs hold the same units, rows and scores, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq


def unit_hashes(run: Path) -> dict[str, str]:
    """sha256 of every committed shard and baseline selection file, by its path in the run."""
    files = sorted(run.glob("shards/*.parquet")) + sorted(run.glob("baselines/*/*.parquet"))
    return {str(f.relative_to(run)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def scores(run: Path) -> dict[tuple[str, str, int], float]:
    """Every evaluation score of the run, by (method, model, network seed)."""
    path = run / "eval" / "results.parquet"
    if not path.exists():
        return {}
    rows = pq.read_table(path, columns=["method", "model", "seed", "accuracy"]).to_pylist()
    return {(r["method"], r["model"], r["seed"]): r["accuracy"] for r in rows}


def metadata_only(a: Path, b: Path) -> list[str]:
    """The metadata keys in which two Parquet files differ when their rows are equal; [] when rows differ."""
    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.schema.remove_metadata() != tb.schema.remove_metadata() or not ta.equals(tb):
        return []
    ma, mb = (json.loads((t.schema.metadata or {}).get(b"dmcondense", b"{}")) for t in (ta, tb))
    return sorted(k for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k)) or ["(other metadata)"]


def differences(before: Path, after: Path) -> tuple[list[str], list[str]]:
    """(differences, notes): units, rows or scores that differ; files whose metadata alone differs."""
    out, notes = [], []
    for kind, a, b in (("file", unit_hashes(before), unit_hashes(after)), ("score", scores(before), scores(after))):
        for key in sorted(a.keys() | b.keys(), key=str):
            if key not in b:
                out.append(f"{kind} {key}: only in {before}")
            elif key not in a:
                out.append(f"{kind} {key}: only in {after}")
            elif a[key] != b[key] and kind == "file" and (keys := metadata_only(before / key, after / key)):
                notes.append(f"file {key}: same rows, metadata differs in {', '.join(keys)}")
            elif a[key] != b[key]:
                out.append(f"{kind} {key}: {a[key]} != {b[key]}")
    return out, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    diffs, notes = differences(args.before, args.after)
    for line in diffs + notes:
        print(line)
    n_files, n_scores = len(unit_hashes(args.before)), len(scores(args.before))
    print(f"{n_files} unit files and {n_scores} scores compared: "
          + ("identical" if not diffs else f"{len(diffs)} difference(s)"))
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
