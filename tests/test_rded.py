"""RDED as a condensation method: the crops' draws, the teacher's scores and the selection
against hand-computed cases, the stitching layout, and a shard that is the same bytes whatever
the worker that runs it and after a resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from orchestrator import storage
from orchestrator.artifacts.shards import shard_state
from orchestrator.cli import main
from orchestrator.artifacts.training_sets import read_method
from orchestrator.components.settings import train_settings
from orchestrator.components.teacher import _LOADED as teacher_cache
from orchestrator.config import ConfigError, load_config
from orchestrator.pipeline import dataset_info, new_run
from orchestrator.pool_dir import PoolSettings
from orchestrator.run_opening import pool_dir
from orchestrator.run_dir import RunError
from orchestrator.run_identity import config_hash
from orchestrator.stages.condense import check_rded_classes, rded_shard
from orchestrator.stages.pool import train_network
from workers import rded
from workers.data.types import DatasetInfo, ImageSet

from .conftest import REPO, ReportedProgress, sets


class MeanTeacher(nn.Module):
    """Logits [mean pixel, 0]: its cross-entropy on class 0 is softplus(-mean), on class 1
    softplus(mean), known by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([m, torch.zeros_like(m)], 1)


def _info(side: int = 8, channels: int = 1) -> DatasetInfo:
    return DatasetInfo("toy", ["a", "b"], channels, (side, side), (0.0,) * channels, (1.0,) * channels,
                       (6, 6), (1, 1))


# ------------------------------------------------------------------ draws
def test_a_crop_that_cannot_fit_falls_back_to_the_largest_centred_square():
    # scale (1, 1) on 4x8: a side of round(sqrt(32)) = 6 fits no try; the fallback is 4x4 at column 2
    boxes = rded.crop_boxes(torch.Generator().manual_seed(0), 3, 4, 8, (1.0, 1.0))
    assert boxes.tolist() == [[0, 2, 4]] * 3
    whole = rded.crop_boxes(torch.Generator().manual_seed(0), 2, 8, 8, (1.0, 1.0))
    assert whole.tolist() == [[0, 0, 8]] * 2


def test_crops_lie_inside_the_image_with_the_area_share_asked_and_repeat_under_their_seed():
    boxes = rded.crop_boxes(torch.Generator().manual_seed(3), 2000, 32, 32, (0.08, 1.0))
    top, left, side = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + side <= 32).all() and (left + side <= 32).all()
    assert side.min() >= round(math.sqrt(0.08 * 1024)) and side.max() == 32
    assert len(set(top.tolist())) > 10 and len(set(left.tolist())) > 10  # offsets spread over the image
    again = rded.crop_boxes(torch.Generator().manual_seed(3), 2000, 32, 32, (0.08, 1.0))
    assert torch.equal(boxes, again)


def test_a_crop_is_cut_resized_and_normalised():
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4) * 10
    # box (1, 2, 2): rows 1-2, columns 2-3, kept at its size: (pixel / 255 - 0.5) / 0.25
    crop = rded.cut_crops(image, torch.tensor([[1, 2, 2]]), 1, (2, 2), (0.5,), (0.25,))
    expected = (torch.tensor([[60., 70.], [100., 110.]]) / 255 - 0.5) / 0.25
    assert torch.allclose(crop[0, 0], expected)


# ------------------------------------------------------------------ scores and selection
def test_the_teachers_cross_entropy_of_a_padded_crop_is_the_hand_computed_one():
    crops = torch.stack([torch.full((1, 2, 2), v) for v in (4.0, -2.0, 0.0)])
    # padded to 4x4 with zeros, the mean is a quarter of the value: softplus(-v / 4) on class 0
    got = rded.crop_losses(MeanTeacher(), crops, 0, (4, 4), batch=2)
    assert torch.allclose(got, torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5)), math.log(2)]))
    on_b = rded.crop_losses(MeanTeacher(), crops, 1, (4, 4), batch=3)
    assert torch.allclose(on_b, torch.tensor([math.log1p(math.exp(1.0)), math.log1p(math.exp(-0.5)), math.log(2)]))


def test_selection_keeps_each_images_best_crop_and_the_best_images_first():
    losses = torch.tensor([[3.0, 1.0, 2.0],
                           [0.5, 4.0, 4.0],
                           [2.0, 2.0, 0.7],
                           [9.0, 8.0, 7.0],
                           [0.7, 5.0, 0.7]])  # ties: image 2 before 4, crop 0 before crop 2
    crop, image = rded.select(losses, 4)
    assert image.tolist() == [1, 2, 4, 0] and crop.tolist() == [0, 2, 0, 1]


# ------------------------------------------------------------------ stitching
def test_tile_k_of_image_t_holds_the_crop_ranked_k_times_ipc_plus_t():
    ipc, crops = 3, torch.arange(12.0).view(12, 1, 1, 1).expand(12, 1, 2, 2)
    out = rded.stitch_crops(crops, 2, ipc, (4, 4))
    for t in range(ipc):
        assert out[t, 0].tolist() == [[t, t, 3 + t, 3 + t], [t, t, 3 + t, 3 + t],
                                      [6 + t, 6 + t, 9 + t, 9 + t], [6 + t, 6 + t, 9 + t, 9 + t]]


def test_where_the_side_does_not_divide_the_first_tiles_are_a_pixel_larger():
    assert rded.tile_sides(5, 2) == [3, 2] and rded.tile_sides(7, 3) == [3, 2, 2]
    crops = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2)  # 5 // 2 = 2: crops of 2x2
    out = rded.stitch_crops(crops, 2, 1, (5, 5))
    assert out[0, 0].tolist() == [[0, 0, 0, 1, 1]] * 3 + [[2, 2, 2, 3, 3]] * 2
    with pytest.raises(ValueError, match="needs 8 crops, got 4"):
        rded.stitch_crops(crops, 2, 2, (4, 4))


def test_stitch_one_stores_the_selected_crops_themselves():
    crops = torch.randn(3, 2, 4, 4)
    assert torch.equal(rded.stitch_crops(crops, 1, 3, (4, 4)), crops)


# ------------------------------------------------------------------ a class
def test_a_class_keeps_the_crops_of_the_images_its_teacher_finds_most_typical():
    # constant images: every crop of image i is its value, so the teacher (class 0: the
    # brighter the better) ranks the images by value alone
    values = torch.tensor([10, 200, 50, 250, 120, 90, 30, 160, 70, 140], dtype=torch.uint8)
    real = values.view(10, 1, 1, 1).expand(10, 1, 8, 8).contiguous()
    settings = rded.RdedSettings(ipc=2, stitch=2, crops=3, candidates=10)
    out = rded.condense_class(real, 0, MeanTeacher(), _info(), settings, seed=5)
    ranked = [250, 200, 160, 140, 120, 90, 70, 50]  # the 2 x 2^2 best, best first
    tiles = [[out.images[t, 0, r:r + 4, c:c + 4] for r in (0, 4) for c in (0, 4)] for t in range(2)]
    for t in range(2):
        for k in range(4):  # tile k of image t: rank k x ipc + t
            assert torch.allclose(tiles[t][k], torch.full((4, 4), ranked[k * 2 + t] / 255))
    mean = torch.tensor(ranked, dtype=torch.float32) / 255 / 4  # a quarter-size crop, padded
    assert torch.allclose(out.losses, torch.nn.functional.softplus(-mean))


def test_a_class_with_too_few_images_for_one_crop_each_is_refused_by_name():
    real = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"class 1 has 3 training images.*needs ipc x stitch\^2 = 4"):
        rded.condense_class(real, 1, MeanTeacher(), _info(), rded.RdedSettings(ipc=1, stitch=2), seed=0)
    with pytest.raises(ValueError, match=r"2 candidates cannot give ipc x stitch\^2 = 4 crops"):
        rded.condense_class(real, 1, MeanTeacher(), _info(), rded.RdedSettings(ipc=1, stitch=2, candidates=2), seed=0)


def test_a_class_depends_only_on_its_own_seed_not_on_the_shard_around_it():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=gen)
    real = ImageSet(images, torch.tensor([0] * 6 + [1] * 6))
    settings = rded.RdedSettings(ipc=2, crops=4, candidates=5)
    both = rded.condense_classes(real, _info(), [0, 1], MeanTeacher(), settings, shard_seed=11)
    alone = rded.condense_classes(ImageSet(images[6:], torch.tensor([1] * 6)), _info(), [1], MeanTeacher(),
                                  settings, shard_seed=11)
    assert torch.equal(both[1].images, alone[0].images)
    other_seed = rded.condense_classes(real, _info(), [0, 1], MeanTeacher(), settings, shard_seed=12)
    assert not torch.equal(both[0].images, other_seed[0].images)
    stored, labels = rded.stored_set(both)
    assert stored.shape == (4, 1, 8, 8) and labels.tolist() == [0, 0, 1, 1]


def test_classes_done_before_are_kept_and_the_rest_computed_as_without_them():
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=gen)
    real = ImageSet(images, torch.tensor([0] * 6 + [1] * 6))
    settings = rded.RdedSettings(ipc=1, crops=2, candidates=6)
    seen: list[int] = []
    whole = rded.condense_classes(real, _info(), [0, 1], MeanTeacher(), settings, 4,
                                  on_class=lambda rs: seen.append(len(rs)))
    assert seen == [1, 2]
    resumed = rded.condense_classes(real, _info(), [0, 1], MeanTeacher(), settings, 4, done=whole[:1])
    assert all(torch.equal(a.images, b.images) and torch.equal(a.losses, b.losses) for a, b in zip(whole, resumed))


# ------------------------------------------------------------------ the condense stage, in process
SETS = ["condense.ipc=2", "condense.rded.crops=2", "condense.rded.candidates=20", "plan.classes=[0,1,2,3,4]",
        "plan.classes_per_shard=3", "pool.networks=1", "pool.epochs=1", "pool.model=ConvNetW32",
        "evaluate.num_models=0", "evaluate.baselines=[]"]


def _config(out, pools, *extra: str):  # noqa: ANN001, ANN202
    return load_config(REPO / "configs" / "digits-rded.yaml", [*SETS, f"pool.uri={pools}", f"output={out}", *extra])


def _make_pool(cfg) -> None:  # noqa: ANN001 - one network of one epoch, trained here
    pool = pool_dir(cfg, dataset_info(cfg))
    pool.save()
    train_network(pool, cfg.resources, train_settings(cfg, "pool"), 0)


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pools")
    _make_pool(_config(root / "unused", root))
    return root


def _run(out, pools, *extra: str):  # noqa: ANN001, ANN202
    run = new_run(_config(out, pools, *extra))
    run.save()
    return run


def _bytes(run, spec) -> bytes:  # noqa: ANN001
    return storage.read_bytes(run.shard_file(spec))


@pytest.fixture(scope="module")
def uninterrupted(pools, tmp_path_factory):  # noqa: ANN001, ANN201 - both shards, one worker, in order
    torch.set_num_threads(1)
    teacher_cache.clear()
    run = _run(tmp_path_factory.mktemp("r") / "whole", pools)
    for spec in run.shards:
        rded_shard(run, spec)
    return run


def test_an_rded_shard_commits_its_classes_stored_images_under_its_teacher(uninterrupted):
    run = uninterrupted
    images, labels = read_method(run)
    assert images.shape == (10, 1, 8, 8) and labels.tolist() == [c for c in range(5) for _ in range(2)]
    manifest = shard_state(run, run.shards[0]).manifest
    assert manifest.rows == 6 and manifest.resumed_from == 0 and manifest.final_loss > 0
    assert manifest.identity["teacher"].startswith("pool ") and manifest.identity["condense"]["method"] == "rded"
    mean, std = run.dataset.mean[0], run.dataset.std[0]
    pixels = images * std + mean  # resized crops of real pixels: inside [0, 1], two distinct images a class
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and not torch.equal(images[0], images[1])


def test_a_resumed_rded_shard_is_the_bytes_of_an_uninterrupted_one(uninterrupted, pools, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    run = _run(tmp_path / "killed", pools)
    spec = run.shards[0]
    calls = []

    def dies_at_the_second_class(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("worker lost")
        return real_condense_class(*args, **kwargs)

    real_condense_class = rded.condense_class
    monkeypatch.setattr(rded, "condense_class", dies_at_the_second_class)
    with pytest.raises(RuntimeError, match="worker lost"):
        rded_shard(run, spec)
    monkeypatch.undo()
    assert shard_state(run, spec).state == "in_progress"
    context = ReportedProgress()
    assert rded_shard(run, spec, context).resumed_from == 1  # the first class from the checkpoint
    assert context.resumed_at == [1]
    assert _bytes(run, spec) == _bytes(uninterrupted, uninterrupted.shards[0])
    assert not storage.exists(run.checkpoint(spec))


def test_a_shard_is_the_same_bytes_on_a_fresh_worker_and_after_another_shard(uninterrupted, pools, tmp_path):
    torch.set_num_threads(1)
    teacher_cache.clear()  # a worker whose first task is shard 1 (the uninterrupted run's ran shard 0 first)
    run = _run(tmp_path / "fresh", pools)
    rded_shard(run, run.shards[1])
    assert _bytes(run, run.shards[1]) == _bytes(uninterrupted, uninterrupted.shards[1])


def test_shards_chosen_by_another_teacher_are_refused_by_name(uninterrupted, pools, tmp_path):
    other = _config(uninterrupted.uri, pools, "pool.seed=1")  # another pool: another best network
    _make_pool(other)
    with pytest.raises(RunError, match="differing keys: teacher"):
        new_run(other)


def test_a_class_too_small_for_one_crop_per_image_stops_the_stage_before_any_task(uninterrupted, pools, tmp_path):
    run = _run(tmp_path / "big", pools, "condense.ipc=40", "condense.rded.stitch=2", "condense.rded.candidates=300")
    with pytest.raises(RunError, match=r"needs ipc x stitch\^2 = 160 training images per class; class 0"):
        check_rded_classes(run)


@pytest.mark.parametrize("sets, message", [
    (["condense.method=rded", "condense.factor=2"], "its stitched images are trained on whole"),
    (["condense.rded.stitch=2"], "belong to condense.method rded"),
    (["condense.method=rded", "condense.teacher.source=torchvision"], "needs its arch and weights"),
    (["condense.method=rded", "condense.ipc=100", "condense.rded.stitch=2"], "candidates 300 cannot give ipc x "
                                                                             "stitch\\^2 = 400 crops"),
])
def test_rded_settings_that_cannot_work_are_refused_when_the_config_is_read(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_rdeds_selection_is_written_out_so_that_defaults_and_their_values_are_one_identity():
    a = load_config(None, ["condense.method=rded"])
    b = load_config(None, ["condense.method=rded", "condense.rded.crops=5", "condense.rded.stitch=1"])
    assert config_hash(a) == config_hash(b) != config_hash(load_config(None, ["condense.method=rded",
                                                                               "condense.rded.crops=4"]))


# ------------------------------------------------------------------ the GPU cost model
def test_the_gpu_cost_model_counts_rdeds_teacher_forwards_of_every_crop():
    from benchmarks.gpu_cost_model import RDED_SCENARIOS, GPUSpec, estimate_rded
    from workers.network_costs import layer_costs

    by_name = {sc.name: sc for sc in RDED_SCENARIOS}
    cifar = estimate_rded(by_name["CIFAR-10 ipc10"], GPUSpec(), 0.4)
    convs = sum(c.macs for c in layer_costs("ConvNet", (3, 32, 32)))
    assert cifar["flops_per_crop"] == 2 * (convs + 128 * 4 * 4 * 10)  # the convolutions and the classifier
    assert cifar["flops_per_class"] == cifar["flops_per_crop"] * 300 * 5
    inet = estimate_rded(by_name["ImageNet-1K ipc10"], GPUSpec(), 0.4)
    assert inet["flops_per_crop"] == pytest.approx(2 * 1.814e9, rel=0.01)  # ResNet-18 at 224: 1.81 GMAC
    assert inet["shards"] == 125 and inet["gpu_memory_per_task_bytes"] > inet["teacher_weights"] > 40e6
    for r in inet["runs"]:  # every shard's classes, in waves over the GPUs
        assert r["wall_s"] == pytest.approx(math.ceil(125 / r["gpus_used"]) * 8 * r["seconds_per_class"])
        assert r["seconds_per_class"] >= inet["host_seconds_per_class"] > 0


# ------------------------------------------------------------------ a torchvision teacher from a file
@pytest.fixture
def rgb_folder(tmp_path) -> Path:
    """3 classes of 10 random 16x16 RGB training images (and 2 test images each)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 10), ("test", 2)):
        for c in ("ant", "bee", "cat"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8, generator=gen).numpy()
                Image.fromarray(pixels).save(tmp_path / "data" / split / c / f"{i}.png")
    return tmp_path / "data"


def _resnet18_weights(path: Path, seed: int) -> Path:
    import torchvision.models

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        torch.save(torchvision.models.resnet18(weights=None, num_classes=3).state_dict(), path)
    return path


def test_a_torchvision_teacher_from_a_file_stitches_2x2_and_its_weights_are_the_shards_identity(rgb_folder,
                                                                                                tmp_path):
    torch.set_num_threads(1)
    weights = _resnet18_weights(tmp_path / "resnet18.pt", 0)
    sets = ["dataset.name=imagefolder", f"dataset.root={rgb_folder}", "dataset.resolution=16", "condense.method=rded",
            "condense.ipc=2",
            "condense.rded={stitch: 2, crops: 2, candidates: 9}", "condense.teacher.source=torchvision",
            "condense.teacher.arch=resnet18", f"condense.teacher.weights={weights}", "plan.classes_per_shard=3",
            "resources.gpus_per_shard=0", "evaluate.num_models=0", "evaluate.baselines=[]", f"output={tmp_path / 'r'}"]
    run = new_run(load_config(None, sets))
    run.save()
    manifest = rded_shard(run, run.shards[0])
    images, labels = read_method(run)
    assert images.shape == (6, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    quadrants = images[0].unfold(1, 8, 8).unfold(2, 8, 8)  # [C, 2, 2, 8, 8]: four crops of distinct images
    assert len({quadrants[:, i, j].sum().item() for i in (0, 1) for j in (0, 1)}) == 4
    digest = storage.sha256_of(str(weights))[:16]
    assert manifest.identity["teacher"] == f"resnet18 {digest}"
    _resnet18_weights(weights, 1)  # other weights at the same path: the shard is no longer this teacher's
    with pytest.raises(RunError, match="differing keys: teacher"):
        new_run(load_config(None, sets))


# ------------------------------------------------------------------ the configs
def test_the_cifar10_rded_configs_score_with_the_pool_that_the_teacher_config_trains():
    teacher = load_config(REPO / "configs" / "cifar10-teacher.yaml")
    for ipc in (1, 10):
        cfg = load_config(REPO / "configs" / f"cifar10-ipc{ipc}-rded.yaml")
        assert cfg.condense.method == "rded" and cfg.condense.ipc == ipc and cfg.condense.teacher.source == "pool"
        assert PoolSettings.of(cfg) == PoolSettings.of(teacher) and cfg.dataset == teacher.dataset
    inet = load_config(REPO / "configs" / "imagenet1k-ipc10-rded.yaml")
    assert inet.condense.effective_rded.stitch == 2 and inet.condense.teacher.arch == "resnet18"


# ------------------------------------------------------------------ dmcondense run, on a local Ray
DIGITS_RDED = str(REPO / "configs" / "digits-rded.yaml")


def test_dmcondense_run_commits_rded_shards_and_a_killed_worker_resumes_to_the_same_bytes(cpu_ray, tmp_path,
                                                                                          monkeypatch, capsys):
    whole = tmp_path / "whole"
    assert main(["run", DIGITS_RDED, "--make-pool", "--out", str(whole)]) == 0  # as shipped
    manifests = sorted((whole / "manifest").glob("shard-*.json"))
    assert len(manifests) == 2 and (whole / "report.md").exists() and (whole / "eval" / "results.parquet").exists()
    assert (whole / "grid.png").exists() and not (whole / "loss.png").exists()  # a selection has no loss curve
    capsys.readouterr()
    assert main(["resume", str(whole)]) == 0
    assert "2 of 2 shards already committed" in capsys.readouterr().out
    monkeypatch.setenv("DMCONDENSE_FAULTS", "shard-00001=kill-after-checkpoint")
    killed = tmp_path / "killed"
    assert main(["run", DIGITS_RDED, "--out", str(killed), *sets(f"pool.uri={whole / 'pool'}",
                                                                 "evaluate.num_models=0")]) == 0
    assert json.loads((killed / "manifest" / "shard-00001.json").read_text())["resumed_from"] == 1
    for name in ("shard-00000.parquet", "shard-00001.parquet"):
        assert (killed / "shards" / name).read_bytes() == (whole / "shards" / name).read_bytes()


def test_the_report_names_the_set_rded_and_says_how_it_was_selected():
    from orchestrator.report import how_made, synthetic_label

    cfg = load_config(REPO / "configs" / "imagenet1k-ipc10-rded.yaml")
    assert synthetic_label(cfg) == "rded (stitch 2)"
    assert how_made(cfg) == ("rded (stitch 2): 300 real images x 5 crops per class scored by the teacher, the best 40 "
                             "stitched 2x2")
    assert synthetic_label(load_config(REPO / "configs" / "digits-rded.yaml")) == "rded"
