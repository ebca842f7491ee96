"""The demo (visionlab.demo, demo_report): its steps cover the four tasks, its overrides are
valid recipe keys, and the table and report come from the runs' files (hand-made here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from visionlab.config import load_config
from visionlab.demo import DEFAULT_STEPS, DEMO_OVERRIDES, RECIPES, parse_steps, train_overrides
from visionlab.demo_report import (
    TASK_ROWS,
    Row,
    collect_rows,
    format_table,
    markdown_table,
    schedule_notes,
    write_report,
)
from visionlab.errors import VisionLabError

ROOT = Path(__file__).resolve().parents[1]


def test_default_steps_cover_the_four_tasks_with_their_metrics() -> None:
    shown = {
        (task, key) for task, step, keys, *_ in TASK_ROWS if step in DEFAULT_STEPS for key in keys
    }
    for task, key in [
        ("classification", "top1"),
        ("detection", "AP50"),
        ("semantic segmentation", "mIoU"),
        ("instance segmentation", "mask_AP"),
        ("relationships", "relationship_R@50"),
    ]:
        assert (task, key) in shown


@pytest.mark.parametrize("step", list(RECIPES))
def test_overrides_are_valid_and_start_from_the_classifier(step: str, tmp_path: Path) -> None:
    recipe = ROOT / RECIPES[step][0]
    classifier = tmp_path / "best.pt"
    classifier.write_bytes(b"")
    overrides = train_overrides(step, classifier)
    cfg = load_config(recipe, overrides)  # unknown keys or bad values would raise
    assert overrides[: len(DEMO_OVERRIDES[step][0])] == DEMO_OVERRIDES[step][0]
    if step == "classify":
        assert not any("pretrained_backbone" in o for o in overrides)
    else:
        assert cfg.model_args["pretrained_backbone"] == str(classifier)
        missing = train_overrides(step, tmp_path / "absent.pt")
        assert load_config(recipe, missing).model_args["pretrained_backbone"] is None


def test_parse_steps_orders_and_refuses_unknown() -> None:
    assert parse_steps("relations, data,classify") == ["data", "classify", "relations"]
    with pytest.raises(VisionLabError, match="unknown demo steps"):
        parse_steps("data,segment")


def _fake_run(out: Path, folder: str, model: str, metrics: dict, seconds: float, **pngs: str):
    """A run folder as the demo's steps leave it: config, eval.json and two predicted images,
    the second with more detections (its drawings ``2_NAME``)."""
    run_dir = out / folder
    (run_dir / "predictions").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"model: {model}\n")
    payload = {"metrics": metrics, "train_seconds": seconds}
    (run_dir / "eval.json").write_text(json.dumps(payload))
    records = []
    for k, found in enumerate([[], [{"label": 1}, {"label": 2}]], start=1):
        names = {key: f"{k}_{name}" for key, name in pngs.items()}
        for name in names.values():
            Image.new("RGB", (64, 48), (200, 30, 30)).save(run_dir / "predictions" / name)
        records.append({"file": f"{k}.png", "detections": found, **names})
    (run_dir / "predictions" / "predictions.json").write_text(json.dumps({"predictions": records}))


def test_table_and_report_from_hand_made_runs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    _fake_run(out, "classify", "tiny_cnn", {"top1": 0.9512, "top5": 1.0}, 61.0, drawing="c.png")
    _fake_run(out, "fcn8s", "fcn8s", {"mIoU": 0.5}, 90.4, drawing="f.png")
    _fake_run(
        out,
        "mask_rcnn",
        "mask_rcnn",
        {"AP": 0.3, "AP50": 0.6, "mask_AP": 0.25, "mask_AP50": 0.55},
        200.0,
        drawing="m.png",
        proposals_drawing="m_proposals.png",
    )
    (out / "relations").mkdir()  # a run that failed before its evaluation: left out
    folders = {"classify": "classify", "fcn": "fcn8s", "mask_rcnn": "mask_rcnn"}
    folders["relations"] = "relations"
    rows = collect_rows(out, folders)
    assert [(r.task, r.metric) for r in rows] == [
        ("classification", "top1"),
        ("detection", "AP"),
        ("detection", "AP50"),
        ("semantic segmentation", "mIoU"),
        ("instance segmentation", "mask_AP"),
        ("instance segmentation", "mask_AP50"),
    ]
    assert rows[0] == Row(
        "classification", "tiny_cnn", "top1", 0.9512, 61.0, "classify/predictions/2_c.png", True
    )
    assert rows[1].picture == "mask_rcnn/predictions/2_m_proposals.png"
    assert rows[4].picture == "mask_rcnn/predictions/2_m.png"

    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["task", "model", "metric", "value", "train", "+", "eval", "(s)"]
    assert re.search(r"classification\s+tiny_cnn\s+top1\s+0\.951\s+61$", lines[2])
    assert len({len(line) for line in lines[1:3]}) == 1  # aligned columns
    assert "| semantic segmentation | fcn8s | mIoU | 0.500 | 90 |" in markdown_table(rows)

    report = write_report(out, rows, "classify 3 epochs (recipe 10 epochs)", minutes=9.5)
    text = report.read_text()
    assert "9.5 min" in text and "classify 3 epochs (recipe 10 epochs)" in text
    assert markdown_table(rows) in text
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert "overview.png" in links and "classify/predictions/2_c.png" in links
    assert all((out / link).is_file() for link in links)  # relative to the report
    with Image.open(out / "overview.png") as sheet:
        assert sheet.width > sheet.height > 0


def test_schedule_notes_compare_with_the_recipe() -> None:
    notes = schedule_notes(
        {
            "classify": (str(ROOT / RECIPES["classify"][0]), ["train.epochs=3"]),
            "mask_rcnn": (str(ROOT / RECIPES["mask_rcnn"][0]), ["train.max_steps=250"]),
        }
    )
    assert notes == "classify 3 epochs (recipe 10 epochs), mask_rcnn 250 steps (recipe 10 epochs)"
