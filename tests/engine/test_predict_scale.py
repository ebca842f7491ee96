"""`visionlab predict` at scale: glob patterns, text files of paths, videos, YOLO label
files, drawings turned off, and a run stopped by Ctrl-C that keeps what it wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from untrained import save_untrained

from visionlab.cli import main


def _ckpt(run: Path) -> str:
    return str(run / "checkpoints" / "best.pt")


def _payload(out: Path) -> dict:
    return json.loads((out / "predictions.json").read_text())


def _copy(folder_dataset: Path, dest: Path, colour: str = "red", n: int = 2) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for src in sorted((folder_dataset / "val" / colour).glob("*.png"))[:n]:
        copies.append(Path(shutil.copy(src, dest / f"{colour}{src.name}")))
    return copies


@pytest.fixture(scope="module")
def detector_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny Faster R-CNN keeping every detection (``score_thresh`` 0): its
    boxes are arbitrary, but there are five of them in every image."""
    path = tmp_path_factory.mktemp("detector") / "checkpoints" / "best.pt"
    args = {
        "num_classes": 4,
        "backbone_width": 4,
        "feature_stride": 8,
        "box_head": {"fc_width": 32},
        "score_thresh": 0.0,
        "detections_per_img": 5,
    }
    return save_untrained(path, "faster_rcnn", "detection", args)


def _write_video(path: Path, n_frames: int, fps: float = 10.0) -> list[np.ndarray]:
    """``n_frames`` 32 x 40 BGR frames of a bright square moving right, as mp4v."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (40, 32))
    frames = []
    for i in range(n_frames):
        frame = np.full((32, 40, 3), 40, np.uint8)
        frame[8:20, 2 + 3 * i : 14 + 3 * i] = (30, 30, 220)
        writer.write(frame)
        frames.append(frame)
    writer.release()
    return frames


def test_a_quoted_glob_is_expanded_and_predicts_as_the_python_api(
    trained_run: Path, folder_dataset: Path, tmp_path: Path
) -> None:
    import visionlab

    data = tmp_path / "data"
    files = _copy(folder_dataset, data / "a", "red") + _copy(folder_dataset, data / "b", "blue")
    (data / "b" / "notes.md").write_text("not matched: not an image")
    out = tmp_path / "out"
    pattern = str(data / "**" / "*.png")  # expanded by visionlab, not by a shell
    argv = ["predict", _ckpt(trained_run), pattern, "--out", str(out), "--workers", "2"]
    assert main([*argv, "--batch-size", "3", "--topk", "3"]) == 0
    records = _payload(out)["predictions"]
    assert [r["file"] for r in records] == [str(f) for f in sorted(files)]
    ckpt, files = _ckpt(trained_run), sorted(files)
    expected = visionlab.predict(ckpt, files, topk=3, batch_size=3, device="cpu")
    for record, pred in zip(records, expected):  # the same transform and model as predict()
        assert [t["label"] for t in record["top"]] == pred["labels"].tolist()
        assert [t["score"] for t in record["top"]] == pred["scores"].tolist()
    assert not list(out.glob("*.jsonl"))  # the journal became predictions.json


def test_a_glob_matching_nothing_is_one_line(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pattern = str(tmp_path / "nowhere" / "*.jpg")
    assert main(["predict", _ckpt(trained_run), pattern, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    message = f"{pattern}: no image or video file matches this pattern"
    assert err == f"visionlab predict: error: {message}"


def test_a_text_file_of_paths_skips_bad_lines_and_unreadable_files(
    trained_run: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = _copy(folder_dataset, tmp_path / "lists" / "images", n=3)
    (tmp_path / "lists" / "images" / "garbage.png").write_bytes(b"these bytes are not a PNG")
    listing = tmp_path / "lists" / "inputs.txt"
    listing.write_text(
        "# predicted on Tuesday\n"
        f"images/{images[0].name}\n"  # relative to the text file, not to the working folder
        "\n"
        "images/missing.png\n"
        f"  {images[2]}  \n"  # absolute, with spaces around
        "images/garbage.png\n"
    )
    out = tmp_path / "out"
    assert main(["predict", _ckpt(trained_run), str(listing), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    payload = _payload(out)
    assert [r["file"] for r in payload["predictions"]] == [
        str(listing.parent / "images" / images[0].name),
        str(images[2]),
    ]
    missing, garbage = payload["skipped"]
    assert missing == {
        "file": str(listing.parent / "images" / "missing.png"),
        "reason": f"no such file (listed in {listing} line 4)",
    }
    assert Path(garbage["file"]).name == "garbage.png"
    assert garbage["reason"] == "not an image file Pillow can read"
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 2
    assert "missing.png" in warnings[0] and "garbage.png" in warnings[1]
    assert captured.out.strip().endswith("2 PNGs in " + f"{out}; 2 unreadable files skipped")


def test_a_video_gives_every_nth_frame_and_an_annotated_video(
    trained_run: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import visionlab

    video = tmp_path / "clip.mp4"
    _write_video(video, 6, fps=10.0)
    image = _copy(folder_dataset, tmp_path / "images", n=1)[0]
    out = tmp_path / "out"
    argv = ["predict", _ckpt(trained_run), str(image), str(video), "--out", str(out)]
    assert main([*argv, "--every", "2", "--batch-size", "2", "--topk", "2"]) == 0
    records = _payload(out)["predictions"]
    assert records[0]["file"] == str(image) and "frame" not in records[0]
    frames = records[1:]
    assert [r["frame"] for r in frames] == [0, 2, 4]
    assert [r["time_s"] for r in frames] == pytest.approx([0.0, 0.2, 0.4])
    assert all(r["file"] == str(video) and (r["height"], r["width"]) == (32, 40) for r in frames)
    assert {r["video"] for r in frames} == {"clip_pred.mp4"}
    assert all("drawing" not in r for r in frames)  # the frames are drawn into the video
    # the frames' predictions are the model's on the decoded frames
    capture = cv2.VideoCapture(str(video))
    decoded = []
    for _ in range(6):
        ok, bgr = capture.read()
        assert ok
        decoded.append(torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 255)
    capture.release()
    ckpt = _ckpt(trained_run)
    expected = visionlab.predict(ckpt, decoded[::2], topk=2, batch_size=2, device="cpu")
    for record, pred in zip(frames, expected):
        assert [t["score"] for t in record["top"]] == pred["scores"].tolist()
    # the annotated video: 3 frames at 10 / 2 frames a second
    annotated = cv2.VideoCapture(str(out / "clip_pred.mp4"))
    assert annotated.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    count = 0
    while annotated.read()[0]:
        count += 1
    annotated.release()
    assert count == 3
    assert "1 annotated video" in capsys.readouterr().out


def test_an_unreadable_video_is_skipped(
    trained_run: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = tmp_path / "images"
    _copy(folder_dataset, images, n=1)
    (images / "broken.mp4").write_bytes(b"no video in here")
    out = tmp_path / "out"
    assert main(["predict", _ckpt(trained_run), str(images), "--out", str(out)]) == 0
    payload = _payload(out)
    assert len(payload["predictions"]) == 1
    (skipped,) = payload["skipped"]
    assert skipped["file"] == str(images / "broken.mp4")
    assert skipped["reason"] == "not a video file OpenCV can read"
    assert "broken.mp4" in capsys.readouterr().err


def test_save_txt_writes_the_json_boxes_as_yolo_lines(
    detector_ckpt: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = _copy(folder_dataset, tmp_path / "images", n=2)
    video = tmp_path / "clip.mp4"
    _write_video(video, 2)
    out = tmp_path / "out"
    argv = ["predict", str(detector_ckpt), *map(str, images), str(video), "--out", str(out)]
    assert main([*argv, "--save-txt", "--score-threshold", "0"]) == 0
    records = _payload(out)["predictions"]
    assert [r["txt"] for r in records] == [
        "labels/red0.txt",
        "labels/red1.txt",
        "labels/clip_000000.txt",
        "labels/clip_000001.txt",
    ]
    for record in records:
        lines = (out / record["txt"]).read_text().splitlines()
        assert len(lines) == len(record["detections"]) == 5
        h, w = record["height"], record["width"]
        for line, det in zip(lines, record["detections"]):
            cls, cx, cy, bw, bh, conf = line.split()
            x1, y1, x2, y2 = det["box"]
            assert int(cls) == det["label"] - 1
            assert float(cx) * w == pytest.approx((x1 + x2) / 2, abs=1e-4)
            assert float(cy) * h == pytest.approx((y1 + y2) / 2, abs=1e-4)
            assert float(bw) * w == pytest.approx(x2 - x1, abs=1e-4)
            assert float(bh) * h == pytest.approx(y2 - y1, abs=1e-4)
            assert float(conf) == pytest.approx(det["score"], abs=1e-5)
    # the COCO results tell a video's frames apart
    results = json.loads((out / "coco_results.json").read_text())
    assert {r["image_id"] for r in results} == {"red0.png", "red1.png", "clip.mp4#0", "clip.mp4#1"}
    assert "4 label files (labels/)" in capsys.readouterr().out


def test_save_txt_is_refused_for_a_model_without_boxes(
    trained_run: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image = str(folder_dataset / "val" / "red" / "0.png")
    out = tmp_path / "out"
    assert main(["predict", _ckpt(trained_run), image, "--out", str(out), "--save-txt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "visionlab predict: error: --save-txt: tiny_cnn predicts no boxes (detectors do)"


def test_no_save_images_writes_only_the_results(
    detector_ckpt: Path, folder_dataset: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    _copy(folder_dataset, images, n=2)
    _write_video(images / "clip.mp4", 2)
    out = tmp_path / "out"
    argv = ["predict", str(detector_ckpt), str(images), "--out", str(out), "--no-save-images"]
    assert main([*argv, "--score-threshold", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["coco_results.json", "predictions.json"]
    records = _payload(out)["predictions"]
    assert len(records) == 4 and all(r["detections"] for r in records)
    assert not any({"drawing", "video"} & set(r) for r in records)


def test_ctrl_c_keeps_the_finished_batches(
    trained_run: Path,
    folder_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import visionlab.engine.api as api

    images = tmp_path / "images"
    _copy(folder_dataset, images, "red", n=3)
    _copy(folder_dataset, images, "blue", n=3)
    predict_batch, calls = api._predict_prepared, []

    def interrupted_second_batch(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return predict_batch(*args, **kwargs)

    monkeypatch.setattr(api, "_predict_prepared", interrupted_second_batch)
    out = tmp_path / "out"
    argv = ["predict", _ckpt(trained_run), str(images), "--out", str(out), "--batch-size", "2"]
    assert main(argv) == 130
    records = _payload(out)["predictions"]
    assert [Path(r["file"]).name for r in records] == ["blue0.png", "blue1.png"]
    assert all((out / r["drawing"]).is_file() for r in records)
    assert not list(out.glob("*.jsonl"))
    assert capsys.readouterr().out.strip().startswith("interrupted: 2 images predicted: ")


def test_out_under_a_pattern_is_not_searched_and_listed_files_in_out_are_refused(
    trained_run: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = tmp_path / "images"
    _copy(folder_dataset, images, n=2)
    out = images / "predictions"
    argv = ["predict", _ckpt(trained_run), str(images / "**" / "*.png"), "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 0  # not the first run's drawings
    second = json.loads((out / "predictions_1.json").read_text())["predictions"]
    assert [Path(r["file"]).name for r in second] == ["red0.png", "red1.png"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{out / second[0]['drawing']}\n")
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(["predict", _ckpt(trained_run), str(listing), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"visionlab predict: error: --out {out} holds the input ")
    assert sorted(p.name for p in out.iterdir()) == before
