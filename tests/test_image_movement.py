"""benchmarks/image_movement.py: how far each run's images moved from their start, for a run
still condensing (its kept checkpoints, its final set named as not committed) and a finished one."""

from __future__ import annotations

import sys

import torch

from benchmarks import image_movement
from orchestrator.artifacts.training_sets import read_method
from orchestrator.stages.condense import condense_shard, stream_identity

from .conftest import checkpoint_first_shard, digits_run

SETS = ["condense.ipc=1", "condense.batch_real=8", "condense.model=ConvNetW32", "plan.classes_per_shard=10",
        "resources.gpus_per_shard=0", "condense.checkpoint_every=3", "condense.keep_checkpoints=true"]


def _table(monkeypatch, capsys, *uris: str) -> dict[str, str]:  # noqa: ANN001
    monkeypatch.setattr(sys, "argv", ["image_movement.py", *uris])
    image_movement.main()
    rows = [line.split(" | ", 2) for line in capsys.readouterr().out.splitlines()[1:]]  # run | iteration | rest
    return {iteration: rest for _, iteration, rest in rows}


def test_a_run_still_condensing_gets_its_checkpoints_and_a_finished_one_its_set(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    start = digits_run(tmp_path / "start", [*SETS, "condense.iterations=0"])
    run = digits_run(tmp_path / "run", [*SETS, "condense.iterations=6"])
    condense_shard(start, start.shards[0])
    condenser = checkpoint_first_shard(run, 3, stream_identity(torch.device("cpu")))

    x0 = read_method(start)[0]
    moved_3 = float((condenser.syn.detach() - x0).square().mean().sqrt())
    table = _table(monkeypatch, capsys, str(tmp_path / "start"), str(tmp_path / "run"))
    assert table["3"] == f"{moved_3:.4f} | {moved_3 / float(x0.square().mean().sqrt()):.3f}" and moved_3 > 0
    assert table["6"].startswith("not committed: shard-00000 is in_progress checkpoint at iteration 3")

    condense_shard(run, run.shards[0])  # resumes from 3 and commits
    table_after = _table(monkeypatch, capsys, str(tmp_path / "start"), str(tmp_path / "run"))
    assert table_after["3"] == table["3"]
    assert float(table_after["6"].split(" | ")[0]) > 0
