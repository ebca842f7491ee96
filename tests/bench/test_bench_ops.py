"""The ops benchmark's plumbing: timing table, equality column, COCO section, missing module."""

from __future__ import annotations

import argparse
import sys
import types

import pytest
import torch
import torchvision

from visionlab import ops
from visionlab.bench import ops as bench_ops
from visionlab.errors import VisionLabError


def args_for(tmp_path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default=str(tmp_path))
    bench_ops.add_arguments(parser)
    return parser.parse_args(["--repeats", "3", "--coco-images", "7", "--threads", "1"])


def tiny_cases(device, quick):
    boxes = torch.rand(30, 4).sort(dim=1).values  # x1 <= y1 <= x2 <= y2: valid xyxy boxes
    cases = [
        bench_ops.Case(
            "box_iou",
            "30x30",
            lambda: ops.box_iou(boxes, boxes),
            lambda: torchvision.ops.box_iou(boxes, boxes),
        ),
        bench_ops.Case("not equal", "30", lambda: boxes, lambda: boxes + 1.0),
    ]
    solos = [bench_ops.Solo("soft_nms", "30 boxes", lambda: ops.soft_nms(boxes, boxes[:, 0]))]
    return cases, solos


def test_run_writes_table_and_coco_section(tmp_path, monkeypatch):
    seen = {}

    def coco_eval_section(n_images: int = 5000, seed: int = 0) -> str:
        seen.update(n_images=n_images, seed=seed)
        return "## COCO evaluation\n\nfake table\n"

    fake = types.ModuleType("visionlab.bench.coco_eval")
    fake.coco_eval_section = coco_eval_section
    monkeypatch.setitem(sys.modules, "visionlab.bench.coco_eval", fake)
    monkeypatch.setattr(bench_ops, "build_cases", tiny_cases)
    status = bench_ops.run(args_for(tmp_path))
    text = (tmp_path / "ops.md").read_text()
    assert text.startswith("# Ops against torchvision\n")
    assert "| box_iou | 30x30 |" in text and "| soft_nms | 30 boxes |" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["box_iou"].rstrip(" |").endswith("| 0")  # equal column: max abs diff 0
    assert rows["not equal"].rstrip(" |").endswith("| 1")
    assert text.rstrip().endswith("fake table") and seen == {"n_images": 7, "seed": 0}
    assert status == 1  # the mismatching row is reported through the exit status


def test_run_refuses_to_write_without_coco_module(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "visionlab.bench.coco_eval", None)
    with pytest.raises(VisionLabError, match="coco_eval"):
        bench_ops.run(args_for(tmp_path))
    assert not (tmp_path / "ops.md").exists()


def test_max_abs_diff():
    x = torch.tensor([1.0, 2.0])
    assert bench_ops.max_abs_diff(x, x + 0.5) == 0.5
    assert bench_ops.max_abs_diff([x, x[:0]], [x, x[:0]]) == 0.0
    assert bench_ops.max_abs_diff(x, x[:1]) == float("inf")
