"""What changes when a run has thousands of classes: the report's grid is a sample with an index."""

from __future__ import annotations

import io

import torch
from PIL import Image

from orchestrator.report import GRID_CLASSES, grid_classes, grid_index, grid_png


def test_few_classes_are_all_shown_without_an_index():
    assert grid_classes([3, 1, 2, 1]) == [1, 2, 3]
    assert grid_index([1, 2, 3], ["a", "b", "c", "d"], 3) == []


def test_many_classes_are_an_even_sample_from_first_to_last():
    classes = list(range(10_450))
    shown = grid_classes(classes)
    assert len(shown) == GRID_CLASSES and shown[0] == 0 and shown[-1] == 10_449
    assert shown == sorted(set(shown))
    gaps = {b - a for a, b in zip(shown, shown[1:])}
    assert max(gaps) - min(gaps) <= 1  # evenly spaced, not the first hundred


def test_the_index_names_every_row_of_a_sample():
    names = [f"n{c:08d}" for c in range(500)]
    shown = grid_classes(range(500), most=5)
    lines = grid_index(shown, names, 500)
    assert lines[0].startswith("grid.png shows 5 of 500 classes")
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert rows == [f"| {i} | {c} | {names[c]} |" for i, c in enumerate(shown, start=1)]


def test_the_grid_has_one_row_per_shown_class():
    classes, ipc, side = 300, 2, 4
    labels = torch.arange(classes).repeat_interleave(ipc)
    images = torch.randn(len(labels), 3, side, side)
    shown = grid_classes(range(classes), most=7)
    png = grid_png(images, labels, (0.5,) * 3, (0.25,) * 3, ipc, shown, min_side=8)
    width, height = Image.open(io.BytesIO(png)).size
    cell = 8 + 2  # enlarged to 8 pixels, 2 of padding
    assert (width, height) == (ipc * cell + 2, len(shown) * cell + 2)
