"""The one table of `benchmarks/gpu_check.sh`: every part's status and its figures, as Markdown.

    python benchmarks/gpu_check_table.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _read(out: Path, name: str) -> str:
    path = out / name
    return path.read_text().strip() if path.exists() else ""


def _status(out: Path, part: str) -> str:
    rc = _read(out, f"{part}.rc")
    seconds = _read(out, f"{part}.seconds")
    if not rc:
        return "not run"
    state = "ok" if rc == "0" else "timed out" if rc == "124" else f"failed (exit {rc})"
    return f"{state}, {seconds} s" if seconds else state


def _last_json(out: Path, part: str) -> dict | None:
    lines = [ln for ln in _read(out, f"{part}.log").splitlines() if ln.startswith("{")]
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def _bench(r: dict) -> str:
    ours = 1 / r["it_per_s"]
    cells = [f"ours {ours:.4f} s/it ({r['gflop_s'] / 1e3:.2f} TFLOP/s)",
             f"reference {1 / r['reference_it_per_s']:.4f} s/it, speed-up {r['speedup']:.2f}x"]
    for name, v in r.get("variants", {}).items():
        cells.append(f"{name} {1 / v['it_per_s']:.4f} s/it ({v['it_per_s'] / r['it_per_s']:.2f}x ours)")
    if r.get("compile_s") is not None:
        cells.append(f"compile {r['compile_s']:.0f} s")
    return "; ".join(cells)


def _eval(r: dict) -> str:
    return "; ".join(f"{row['ipc']} ipc: one at a time {row['loop_s']} s, vmapped {row['vmap_s']} s, "
                     f"ratio {row['ratio']}" for row in r["rows"])


def _run(out: Path) -> str:
    log = _read(out, "run.log").splitlines()
    rows = [ln for ln in log if ln.startswith("│ dm ")]
    return rows[0].strip("│ ").replace("│", "|") if rows else (log[-1] if log else "")


def _recipes(r: dict) -> str:
    return "; ".join(f"{row['recipe']} {row['s_per_it']} s/it ({row['paper_hours']} h)" for row in r["rows"])


def table(out: Path) -> str:
    gpu = _read(out, "gpu.txt") or "no nvidia-smi"
    lines = ["| part | status | figures |", "| --- | --- | --- |",
             f"| machine | - | {gpu}; torch {_read(out, 'torch.txt')} |"]
    if (out / "install.rc").exists():
        lines.append(f"| install | {'ok' if _read(out, 'install.rc') == '0' else 'failed'} | - |")
    tests = _read(out, "cuda-tests.log").splitlines()
    if tests or (out / "cuda-tests.rc").exists():
        lines.append(f"| CUDA tests | {_status(out, 'cuda-tests')} | {tests[-1] if tests else ''} |")
    for ipc in (10, 50):
        r = _last_json(out, f"bench-ipc{ipc}")
        where = f"{'x'.join(map(str, r['shape']))}, {r['classes']} classes, {r['device']}" if r else "?"
        lines.append(f"| DM loop, {ipc} ipc ({where}) | {_status(out, f'bench-ipc{ipc}')} "
                     f"| {_bench(r) if r else 'no result'} |")
    r = _last_json(out, "eval")
    lines.append(f"| evaluation, 5 networks | {_status(out, 'eval')} | {_eval(r) if r else 'no result'} |")
    r = _last_json(out, "recipes")
    where = f"{r['shape'].replace(',', 'x')}, {r['classes']} classes, {r['ipc']} ipc; hours: {r['paper_iterations']:,} " \
        "iterations" if r else "?"
    lines.append(f"| recipes, one iteration ({where}) | {_status(out, 'recipes')} | {_recipes(r) if r else 'no result'} |")
    lines.append(f"| end to end: dmcondense run configs/digits.yaml, shortened | {_status(out, 'run')} | {_run(out)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
