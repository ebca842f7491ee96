"""`visionlab bench lineage`: verdicts that follow the numbers, speed-ups from the run's own
times, the peer's offline settings, and a tiny end-to-end run."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from visionlab.bench import lineage as bench
from visionlab.bench import lineage_report as report
from visionlab.bench.lineage_peer import peer_env, to_predictions

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _row(name: str, total: float, train_s: float, proposals: float | None, ap: float) -> dict:
    parts = dict.fromkeys(report.SPLIT)
    if proposals is not None:
        parts = {
            "proposals": proposals,
            "features": total - proposals - 2,
            "heads": 1.0,
            "NMS": 1.0,
        }
    errors = dict.fromkeys(report.ERRORS, 1) | {"detections": 5}
    return {
        "name": name,
        "total": total,
        "train_s": train_s,
        "parts": parts,
        "steps": 10,
        "metrics": dict.fromkeys(METRICS, ap),
        "errors": errors,
    }


def _rows(sppnet_total: float, box_reg: tuple[float, float], align_ap: float) -> dict:
    rows = {
        "rcnn": _row("R-CNN", 1000.0 + 100.0, 600.0, 100.0, 0.4),
        "sppnet": _row("SPPNet", sppnet_total + 100.0, 300.0, 100.0, 0.3),
        "fast_rcnn": _row("Fast R-CNN", 10.0 + 100.0, 60.0, 100.0, 0.5),
        "faster_rcnn": _row("Faster R-CNN", 12.0, 50.0, 2.0, align_ap),
        "faster_rcnn_roi_pool": _row("Faster R-CNN, RoI pool", 12.0, 50.0, 2.0, 0.5),
        "yolo": _row("YOLO v1", 3.0, 40.0, None, 0.45),
    }
    rows["rcnn"]["AP50_box_reg"], rows["rcnn"]["AP50_no_box_reg"] = box_reg
    rows["rcnn"]["mean_proposals"] = 200.0
    return rows


def _verdicts(rows: dict) -> dict[str, tuple[float, str]]:
    return {c["claim"].split(" (")[0]: (c["measured"], c["verdict"]) for c in report.claims(rows)}


def test_verdicts_follow_the_numbers() -> None:
    # SPPNet 40x faster than R-CNN without proposals (1000 / 25): reproduced (paper 24x)
    v = _verdicts(_rows(25.0, (0.6, 0.5), align_ap=0.55))
    assert v["SPPNet is 24-102x faster than R-CNN at test time"] == (40.0, report.REPRODUCED)
    assert v["Fast R-CNN is 213x faster than R-CNN at test time"] == (100.0, report.DIRECTION)
    assert v["Fast R-CNN trains 9x faster than R-CNN"] == (10.0, report.REPRODUCED)
    assert v["YOLO runs at 45 fps against Faster R-CNN's 7"] == (4.0, report.DIRECTION)
    assert v["The RPN proposes in ~10 ms where selective search takes ~2 s"] == (
        50.0,
        report.DIRECTION,
    )
    measured, verdict = v["Box regression raises R-CNN's mAP"]
    assert measured == pytest.approx(0.1) and verdict == report.REPRODUCED
    measured, verdict = v["RoI align raises AP over RoI pool"]
    assert measured == pytest.approx(0.05) and verdict == report.REPRODUCED
    assert v["Box regression raises SPPNet's mAP"][1] == report.NOT_MEASURED  # no figures
    # the same claims with other numbers: the wording follows
    v = _verdicts(_rows(2000.0, (0.5, 0.6), align_ap=0.45))
    assert v["SPPNet is 24-102x faster than R-CNN at test time"] == (0.5, report.NOT_REPRODUCED)
    assert v["Box regression raises R-CNN's mAP"][1] == report.NOT_REPRODUCED
    assert v["RoI align raises AP over RoI pool"][1] == report.NOT_REPRODUCED
    claims = {c["claim"].split(" (")[0]: c for c in report.claims(_rows(2000.0, (0.5, 0.6), 0.45))}
    assert claims["SPPNet is 24-102x faster than R-CNN at test time"]["why"].startswith(
        "measured 0.5x against 24x"
    )
    assert "AP50 -0.100" in claims["Box regression raises R-CNN's mAP"]["why"]
    assert claims["Fast R-CNN trains 9x faster than R-CNN"]["why"] == ""  # reproduced


def test_speedups_are_rcnn_time_over_each_models() -> None:
    s = report.speedups(_rows(25.0, (0.6, 0.5), 0.55))
    assert s["rcnn"] == {"test": 1.0, "test_no_proposals": 1.0, "train": 1.0}
    assert s["sppnet"]["test"] == pytest.approx(1100 / 125)
    assert s["sppnet"]["test_no_proposals"] == pytest.approx(1000 / 25)
    assert s["yolo"] == {
        "test": pytest.approx(1100 / 3),
        "test_no_proposals": 1000 / 3,
        "train": 15.0,
    }
    assert math.isnan(
        report.speedups({"yolo": _row("YOLO v1", 3.0, 4.0, None, 0.4)})["yolo"]["test"]
    )


def test_peer_runs_offline_with_a_private_config(tmp_path: Path) -> None:
    env = peer_env(tmp_path / "py" / "bin" / "python", tmp_path / "cfg", threads=2)
    assert env["YOLO_OFFLINE"] == "1" and env["YOLO_AUTOINSTALL"] == "0"
    assert env["YOLO_CONFIG_DIR"] == str(tmp_path / "cfg") and env["OMP_NUM_THREADS"] == "2"
    font = tmp_path / "cfg" / "Ultralytics" / "Arial.ttf"
    assert font.is_file() and font.read_bytes()[:4] == b"\x00\x01\x00\x00"  # a TrueType font


class _Val:
    """Two records whose images our models see at 128 px."""

    def __init__(self, records: list) -> None:
        self.records = records

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        return torch.zeros(3, 128, 128), {}


def test_peer_predictions_map_to_our_images_and_labels() -> None:
    records = [
        SimpleNamespace(file_name="a/000.png", width=64, height=64),
        SimpleNamespace(file_name="001.png", width=64, height=64),
    ]
    dataset = _Val(records)
    record = {
        "predictions": [
            {"file_name": "000.png", "boxes": [[1, 2, 3, 4]], "classes": [0], "scores": [0.9]}
        ]
    }
    preds = to_predictions(record, dataset, 2)
    assert preds[0]["boxes"].tolist() == [[2.0, 4.0, 6.0, 8.0]]  # 64 px -> the 128 px input
    assert preds[0]["labels"].tolist() == [1] and preds[1]["boxes"].shape == (0, 4)


@pytest.mark.slow
def test_tiny_run_writes_the_table_from_its_own_numbers(tmp_path: Path) -> None:
    from visionlab.data.scenes import render_scenes

    torch_threads = torch.get_num_threads()
    data = render_scenes(tmp_path / "data", n_train=6, n_val=3, size=64, progress=False, workers=0)
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir")
    bench.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "--detectors",
            "rcnn,faster_rcnn,yolo",
            "--data",
            str(data),
            "--image-size",
            "64",
            "--max-steps",
            "2",
            "--finetune-images",
            "3",
            "--timing-images",
            "2",
            "--recall-images",
            "1",
            "--threads",
            "1",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--backbone-init",
            "none",
            "--peer-python",
            str(tmp_path / "no-peers" / "python"),
            "--out-dir",
            str(out),
            "train.batch_size=2",
        ]
    )
    try:
        assert bench.run(args) == 0
    finally:
        torch.set_num_threads(torch_threads)
    text = (out / "lineage.md").read_text()
    record = json.loads((out / "lineage.json").read_text())
    for png in ("lineage_speed.png", "lineage_recall.png", "lineage_errors.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    main = text.split("| detector | AP |", 1)[1].split("\n\n", 1)[0]  # the one table
    table = {line.split(" | ")[0][2:]: line.split(" | ") for line in main.splitlines()[2:]}
    rows = record["rows"]
    assert list(rows) == ["rcnn", "faster_rcnn", "yolo"]
    rcnn = rows["rcnn"]
    for key, row in rows.items():
        cells = table[row["name"]]
        assert cells[2] == f"{row['metrics']['AP50']:.3f}"  # AP50 from the evaluator's record
        assert cells[13] == f"{row['total']:.1f}"
        assert cells[14] == f"{rcnn['total'] / row['total']:.1f}x", key  # speed-up: the run's
        assert cells[15].rstrip(" |") == f"{rcnn['train_s'] / row['train_s']:.1f}x", key
        total = sum(row["parts"][k] for k in report.SPLIT) if key != "yolo" else row["total"]
        assert row["total"] == pytest.approx(total)
    assert table["YOLO v1"][9] == "one pass"
    assert table["Ultralytics yolov8n (peer)"][1] == "not installed"
    assert "make peers" in text
    claims = {c["claim"]: c for c in record["claims"]}
    yolo = claims["YOLO runs at 45 fps against Faster R-CNN's 7 (6.4x)"]
    assert yolo["measured"] == pytest.approx(rows["faster_rcnn"]["total"] / rows["yolo"]["total"])
    assert yolo["verdict"] == report.ratio_verdict(yolo["measured"], 45 / 7)
    assert re.search(r"\| YOLO runs at 45 fps .* \| " + re.escape(yolo["verdict"]), text)
    assert claims[next(c for c in claims if c.startswith("SPPNet"))]["verdict"] == "not measured"
    recall = record["recall"]
    assert set(recall["curves"]) == {
        "selective search fast",
        "selective search quality",
        "sliding windows",
        "RPN",
    }
    assert all(0 <= v <= 1 for values in recall["curves"].values() for v in values)


def test_busy_machine_is_stated_from_the_load_measured() -> None:
    assert report.busy_note({"load_values": [1.5, 1.9], "cores": 2}) == ""
    note = report.busy_note({"load_values": [3.0, 9.5], "cores": 2})
    assert note.startswith(" The machine was busy (load 9.5 on 2 cores")
