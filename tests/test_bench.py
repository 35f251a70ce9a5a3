"""`dmcondense bench`: the measured comparison and the GPU cost model."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from benchmarks.dm_loop import main
from benchmarks.gpu_cost_model import embed_cost, iteration_flops
from workers.dm import DMSettings

from .conftest import REPO

TINY = ["--shape", "1,8,8", "--classes", "2", "--ipc", "1", "--batch-real", "4", "--model", "ConvNetW32",
        "--iterations", "1", "--device", "cpu"]


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


# Compiling the loop (compile on where a C++ compiler is) takes most of a minute on 2 cores, longer
# beside other work: more than the fast tier's 60 s, which is there to catch hangs.
@pytest.mark.timeout(300)
def test_measurement_reports_both_loops_and_they_agree(capsys):
    r = run_json(capsys, [*TINY, "--json", "--variants", "chunk=0,chunk=3+channels_last=off"])
    for key in ("it_per_s", "reference_it_per_s", "speedup", "peak_mem_mb", "device", "settings", "variants"):
        assert key in r
    assert r["it_per_s"] > 0 and r["reference_it_per_s"] > 0 and r["speedup"] > 0
    assert r["speedup"] == pytest.approx(r["it_per_s"] / r["reference_it_per_s"])
    assert r["device"] == "cpu" and r["peak_mem_mb"] > 0
    assert r["settings"]["embed_chunk"] == DMSettings(ipc=1, iterations=1).resolve(torch.device("cpu")).embed_chunk
    assert r["max_abs_diff_vs_reference"] < 1e-4  # same draws: same images
    assert r["gflop_per_it"] == pytest.approx(iteration_flops("ConvNetW32", (1, 8, 8), 2, 1, 4) / 1e9)
    assert r["gflop_s"] == pytest.approx(r["gflop_per_it"] * r["it_per_s"])
    assert r["reference_gflop_s"] == pytest.approx(r["gflop_per_it"] * r["reference_it_per_s"])
    for share, faults in ((r["kernel_share"], r["faults_per_step"]),
                          (r["reference_kernel_share"], r["reference_faults_per_step"])):
        assert 0 <= share <= 1 and faults >= 0
    assert set(r["variants"]) == {"chunk=0", "chunk=3+channels_last=off"}
    for v in r["variants"].values():
        assert v["it_per_s"] > 0 and v["speedup"] > 0 and v["max_abs_diff_vs_reference"] < 1e-4


def test_ours_is_what_a_shipped_gpu_config_runs():
    from benchmarks.dm_loop import ours_settings, parse_args
    from orchestrator.config import load_config
    from orchestrator.components.settings import dm_settings

    cuda = torch.device("cuda")
    config = dm_settings(load_config(REPO / "configs" / "cifar10-ipc10.yaml")).resolve(cuda)
    ours = ours_settings(parse_args(["--shape", "3,32,32", "--ipc", "10"])).resolve(cuda)
    assert dataclasses.replace(ours, iterations=config.iterations) == config
    assert (ours.embed_chunk, ours.precision.tf32, ours.compile, ours.sync_free) == (0, True, True, True)


def test_table_without_json(capsys):
    assert main(TINY) == 0
    out = capsys.readouterr().out
    assert "reference (per class)" in out and "ours (defaults)" in out


def test_conv_macs_of_convnet_by_hand():
    macs, elems = embed_cost("ConvNet", (3, 32, 32))
    by_hand = 32 * 32 * 128 * 3 * 9 + 16 * 16 * 128 * 128 * 9 + 8 * 8 * 128 * 128 * 9
    assert macs == by_hand and elems > 0
    # 10 classes: 256 real images forward, 10 synthetic forward and backward to the pixels
    assert iteration_flops("ConvNet", (3, 32, 32), 10, 10, 256) == 2 * by_hand * 10 * (256 + 2 * 10)


def test_gpu_estimate_scales_with_gpus_and_work(capsys):
    e = run_json(capsys, ["--estimate", "gpu", "--json"])
    assert e["label"].startswith("ESTIMATE")
    by_name = {s["scenario"]: s for s in e["scenarios"]}
    assert {"CIFAR-10 ipc50", "ImageNet-1K ipc10", "ImageNet-1K ipc50"} <= set(by_name)
    for s in e["scenarios"]:
        assert s["flops_per_iteration"] > 0
        assert all(r["gpu_hours"] > 0 and r["wall_h"] > 0 for r in s["runs"])
    inet10, inet50 = by_name["ImageNet-1K ipc10"], by_name["ImageNet-1K ipc50"]
    assert inet50["flops_per_iteration"] > inet10["flops_per_iteration"]
    for precision in ("bf16", "fp32"):
        wall = {r["gpus"]: r["wall_h"] for r in inet10["runs"] if r["precision"] == precision}
        assert wall[64] / wall[8] == pytest.approx(1 / 8, rel=0.15)
    cifar = by_name["CIFAR-10 ipc50"]["runs"]
    assert max(r["gpus_used"] for r in cifar) == 1  # one shard of 10 classes: one GPU
    for s in e["scenarios"]:  # the host's dispatch of every op is charged per shard-iteration
        assert s["kernels_per_shard_iteration"] > 100
        assert all(r["seconds_per_shard_iteration"] >= r["host_seconds_per_shard_iteration"] > 0 for r in s["runs"])


def test_kernels_of_an_iteration_are_counted_from_the_loop():
    from benchmarks.gpu_cost_model import kernels_per_iteration

    small = kernels_per_iteration("ConvNetW32", 8, 2, 1, 8)
    assert small > 50
    # one pass over every class and image (the CUDA path): the count does not grow with the shard...
    assert kernels_per_iteration("ConvNetW32", 8, 8, 1, 256) == small
    # ...but with the network's layers
    assert kernels_per_iteration("ConvNetD4", 16, 2, 1, 8) > small


def test_bf16_moves_half_the_bytes_of_convolutions_only():
    from benchmarks.gpu_cost_model import embed_bytes
    from workers.network_costs import layer_costs

    costs = layer_costs("ConvNet", (3, 32, 32))
    conv_out = sum(c.out_elements for c in costs if c.kind in ("conv", "linear"))
    assert embed_bytes("ConvNet", (3, 32, 32), False) - embed_bytes("ConvNet", (3, 32, 32), True) == 2 * conv_out


def test_estimate_as_text(capsys):
    assert main(["--estimate", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATE" in out and "ImageNet-1K ipc50" in out and "989" in out


@pytest.mark.parametrize("shape", ["3,32", "3,x,32", "3,0,32"])
def test_bad_shape_is_named(capsys, shape):
    with pytest.raises(SystemExit) as exc:
        main(["--shape", shape])
    assert exc.value.code == 2
    assert "--shape must be three positive integers C,H,W" in capsys.readouterr().err


def test_bad_variant_is_named(capsys):
    with pytest.raises(SystemExit):
        main([*TINY, "--variants", "chunky=3"])
    assert "unknown variant 'chunky=3'" in capsys.readouterr().err


def test_cpu_peak_floor_is_the_iteration_flops_over_the_best_fp32_rate(capsys):
    from benchmarks.cpu_peak import main as cpu_peak

    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("the probe is compiled with the system C compiler, and there is none")
    cpu_peak(["--shape", "1,8,8", "--model", "ConvNetW32", "--classes", "2", "--ipc", "1", "--batch-real", "4",
              "--reference-s", "2.0", "--seconds", "0.02", "--json"])
    r = json.loads(capsys.readouterr().out)
    fp32 = [by_threads[str(r["threads"])] for name, by_threads in r["peak_gflop_s"].items() if "fp32" in name]
    assert fp32 and min(fp32) > 0
    assert r["gflop_per_it"] == pytest.approx(iteration_flops("ConvNetW32", (1, 8, 8), 2, 1, 4) / 1e9)
    assert r["fp32_floor_s"] == pytest.approx(r["gflop_per_it"] / max(fp32))
    assert r["max_fp32_speedup"] == pytest.approx(2.0 / r["fp32_floor_s"])
