"""`visionlab train / eval / predict / export` end to end on a tiny image-folder dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import train_args
from PIL import Image

import visionlab
from visionlab.cli import main
from visionlab.engine.checkpoint import load_checkpoint
from visionlab.errors import VisionLabError


def test_train_writes_the_run_directory(trained_run: Path) -> None:
    names = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*")}
    assert {"config.yaml", "metrics.jsonl", "eval.json", "curves.png"} <= names
    assert {"checkpoints/last.pt", "checkpoints/best.pt"} <= names
    assert any(n.startswith("tb/events.out.tfevents") for n in names)
    state = load_checkpoint(trained_run / "checkpoints" / "last.pt")
    assert state["model_name"] == "tiny_cnn" and state["task"] == "classification"
    assert state["classes"] == ["blue", "green", "red"]
    assert state["model_args"]["num_classes"] == 3 and state["model_args"]["width"] == 4
    assert state["config"]["train"]["epochs"] == 2 and state["step"] == 12
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").open()]
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    assert all({"loss", "loss_classifier", "lr", "epoch"} <= set(r) for r in train)
    assert [r["step"] for r in evals] == [6, 12]
    assert {"val/top1", "val/top5"} <= set(evals[0]) and "per_class" in evals[0]["metrics"]
    best = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    assert best["step"] == best["best_metric"]["step"]
    eval_json = json.loads((trained_run / "eval.json").read_text())
    assert eval_json["metrics"]["top1"] == evals[-1]["val/top1"]
    assert eval_json["train_seconds"] > 0 and eval_json["resumed"] is False


def test_eval_command(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    (trained_run / "eval.json").unlink()
    assert main(["eval", str(trained_run / "checkpoints" / "last.pt"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").open()]
    final = [r for r in records if r["type"] == "eval"][-1]
    assert metrics["top1"] == pytest.approx(final["val/top1"])
    assert metrics["top5"] == 1.0  # 3 classes: always in the top 5
    written = json.loads((trained_run / "eval.json").read_text())
    assert written["metrics"]["top1"] == metrics["top1"] and written["split"] == "val"


def test_eval_limit_scores_the_first_images(
    trained_run: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = str(trained_run / "checkpoints" / "last.pt")
    assert main(["eval", ckpt, "--json", "--limit", "1"]) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert one["top1"] in (0.0, 1.0)  # a single image is right or wrong
    assert json.loads((trained_run / "eval.json").read_text())["images"] == "first 1"
    assert main(["eval", ckpt, "--json", "--limit", "1000"]) == 0  # more than the split: all
    every = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", ckpt, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == every
    assert main(["eval", ckpt, "--limit", "0"]) == 2
    assert "limit must be a positive number" in capsys.readouterr().err


def test_predict_command(
    trained_run: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "pred"
    red = folder_dataset / "val" / "red"
    blue0 = folder_dataset / "val" / "blue" / "0.png"
    args = ["predict", str(trained_run / "checkpoints" / "best.pt"), str(red), str(blue0)]
    assert main([*args, "--out", str(out), "--topk", "2"]) == 0
    payload = json.loads((out / "predictions.json").read_text())
    preds = payload["predictions"]
    assert [Path(p["file"]).name for p in preds] == ["0.png", "1.png", "2.png", "0.png"]
    assert all(len(p["top"]) == 2 for p in preds)
    assert all(p["top"][0]["score"] >= p["top"][1]["score"] for p in preds)
    assert {p["top"][0]["class"] for p in preds} <= {"blue", "green", "red"}
    drawings = {p["drawing"] for p in preds}
    assert len(drawings) == 4 and all((out / d).is_file() for d in drawings)
    assert Image.open(out / preds[0]["drawing"]).height > 20  # caption below the image
    # without --out, predictions go to the run's predictions/ folder
    assert main(["predict", str(trained_run / "checkpoints" / "best.pt"), str(blue0)]) == 0
    assert (trained_run / "predictions" / "predictions.json").is_file()


def test_predict_matches_the_python_api(trained_run: Path, folder_dataset: Path) -> None:
    model = visionlab.load(trained_run / "checkpoints" / "best.pt")
    assert model.classes == ["blue", "green", "red"] and not model.training
    files = sorted((folder_dataset / "val" / "green").glob("*.png"))
    preds = visionlab.predict(model, files, topk=3, device="cpu")
    assert len(preds) == 3
    for p in preds:
        assert p["labels"].shape == (3,) and torch.allclose(p["scores"].sum(), torch.tensor(1.0))


def test_predict_from_a_path_fuses_and_leaves_a_given_model_alone(
    trained_run: Path, folder_dataset: Path
) -> None:
    ckpt = trained_run / "checkpoints" / "best.pt"
    model = visionlab.load(ckpt)
    batch_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    files = sorted((folder_dataset / "val" / "red").glob("*.png"))
    given = visionlab.predict(model, files, topk=3, device="cpu")
    from_path = visionlab.predict(ckpt, files, topk=3, device="cpu")  # loaded, then fused
    assert batch_norms > 0 and not getattr(model, "fused", False)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == batch_norms
    assert visionlab.load(ckpt, fuse=True).fused
    assert len(given) == len(from_path) == len(files) > 0
    for a, b in zip(given, from_path):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)


def test_export_round_trip(trained_run: Path, tmp_path: Path, folder_dataset: Path) -> None:
    ckpt = trained_run / "checkpoints" / "best.pt"
    out = tmp_path / "export"
    assert main(["export", str(ckpt), "--format", "safetensors", "--out", str(out)]) == 0
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["model_name"] == "tiny_cnn" and sidecar["classes"] == ["blue", "green", "red"]
    assert sidecar["input_size"] == [3, 16, 16] and sidecar["normalize"]["inside_model"]
    a, b = visionlab.load(ckpt), visionlab.load(out)
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(a(x), b(x))
    assert visionlab.evaluate(b, folder_dataset, "val", progress=False)["top1"] == pytest.approx(
        visionlab.evaluate(a, folder_dataset, "val", progress=False)["top1"]
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "missing.yaml"], "missing.yaml: no such recipe file"),
        (["train", "train.epochz=3"], "did you mean 'train.epochs'"),
        (["eval", "nowhere.pt"], "nowhere.pt: no such checkpoint file"),
        (["export", "nowhere.pt", "--out", "x"], "no such checkpoint file"),
        (["train", "train.amp=fp16", "device=cpu"], "fp16 needs CUDA; use bf16 on CPU"),
        (["train", "augment.hflp=0.5", "data=."], "did you mean 'augment.hflip'"),
    ],
)
def test_user_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_predict_refuses_a_non_image(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    ckpt = str(trained_run / "checkpoints" / "best.pt")
    assert main(["predict", ckpt, str(notes), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "notes.txt" in err and "not an image" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--show-grid", "--show-grid: tiny_cnn predicts no grid (YOLO models do)"),
        (
            "--show-proposals",
            "--show-proposals: tiny_cnn makes no region proposals (the R-CNN family does)",
        ),
    ],
)
def test_predict_refuses_an_extra_the_model_does_not_make(
    trained_run: Path,
    folder_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    flag: str,
    message: str,
) -> None:
    ckpt = str(trained_run / "checkpoints" / "best.pt")
    image = str(folder_dataset / "val" / "blue" / "0.png")
    out = tmp_path / "o"
    assert main(["predict", ckpt, image, "--out", str(out), flag]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"visionlab predict: error: {message}"
    assert not list(out.glob("*"))  # refused before anything was drawn
    with pytest.raises(VisionLabError, match="tiny_cnn cannot return the extra"):
        visionlab.predict(ckpt, [image], device="cpu", extras=("grid",))


def test_nan_loss_exits_with_the_step_and_term(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = train_args(folder_dataset, tmp_path / "nan", "optim.lr=1e30", "train.epochs=1")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("visionlab train: error: step ")
    assert "loss_classifier is nan" in err or "loss_classifier is inf" in err
