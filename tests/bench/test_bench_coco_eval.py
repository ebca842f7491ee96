"""The ops benchmark's COCO section (`visionlab.bench.coco_eval`): ours against pycocotools."""

from __future__ import annotations

from visionlab.bench.coco_eval import coco_eval_section


def test_bench_section_reports_equality():
    text = coco_eval_section(n_images=30, seed=1, repeats=1)
    assert "All 12 stats equal: yes" in text and "| pycocotools |" in text
