"""`visionlab predict` never destroys a user's files and never stops for one bad file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from visionlab.cli import main
from visionlab.data.imageio import image_size


def _ckpt(run: Path) -> str:
    return str(run / "checkpoints" / "best.pt")


def _copy_images(folder_dataset: Path, dest: Path, n: int = 3) -> Path:
    """``dest`` holding copies of ``n`` validation images (the session dataset stays clean)."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted((folder_dataset / "val" / "red").glob("*.png"))[:n]:
        shutil.copy(src, dest / src.name)
    return dest


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _payload(out: Path, name: str = "predictions.json") -> dict:
    return json.loads((out / name).read_text())


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command gets as far as loading the model."""
    import visionlab.engine.api as api

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the problem was reported")

    monkeypatch.setattr(api, "load", refuse)


# --- 1. --out overlapping the inputs -----------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "out"),
    [
        (["images"], "images"),  # the drawings would replace the images of the same name
        (["images"], "."),  # an input folder inside --out
        (["images/0.png", "images/1.png"], "images"),  # an input file inside --out
    ],
    ids=["out-is-the-input-folder", "out-holds-the-input-folder", "out-holds-an-input-file"],
)
def test_out_overlapping_the_inputs_is_refused(
    trained_run: Path,
    folder_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    no_model_load: None,
    inputs: list[str],
    out: str,
) -> None:
    _copy_images(folder_dataset, tmp_path / "images")
    before = _snapshot(tmp_path)
    argv = ["predict", _ckpt(trained_run), *(str(tmp_path / i) for i in inputs)]
    assert main([*argv, "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("visionlab predict: error: ")
    assert str(tmp_path / out) in err and str(tmp_path / inputs[0]) in err
    assert _snapshot(tmp_path) == before


def test_out_inside_an_input_folder_is_not_searched(
    trained_run: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = _copy_images(folder_dataset, tmp_path / "images")
    out = images / "predictions"
    argv = ["predict", _ckpt(trained_run), str(images), "--out", str(out)]
    assert main(argv) == 0
    first = _snapshot(out)
    assert main(argv) == 0  # the second run must not predict the first run's drawings
    second = _payload(out, "predictions_1.json")["predictions"]
    assert [Path(r["file"]).name for r in second] == ["0.png", "1.png", "2.png"]
    assert all(Path(r["file"]).parent == images for r in second)
    assert {k: v for k, v in _snapshot(out).items() if k in first} == first
    assert "predictions_1.json" in capsys.readouterr().out.splitlines()[-1]


# --- 2. never overwrite a file this run did not write ------------------------------------


def test_existing_files_in_out_are_never_overwritten(
    trained_run: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    mine = {"0.png": b"my own picture", "0_1.png": b"another", "predictions.json": b"{}"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    red0, blue0 = (folder_dataset / "val" / c / "0.png" for c in ("red", "blue"))
    assert main(["predict", _ckpt(trained_run), str(red0), str(blue0), "--out", str(out)]) == 0
    assert all((out / name).read_bytes() == data for name, data in mine.items())
    records = _payload(out, "predictions_1.json")["predictions"]
    assert [r["drawing"] for r in records] == ["0_2.png", "0_3.png"]
    assert all(image_size(out / r["drawing"]) for r in records)  # real drawings
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary == f"2 images predicted: {out / 'predictions_1.json'} and 2 PNGs in {out}"


# --- 3. an --out that cannot be a writable folder, found before the model loads ----------


def _existing_file(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    (tmp_path / "taken.png").write_bytes(b"a user's file")
    return tmp_path / "taken.png"


def _below_a_file(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    (tmp_path / "notes.txt").write_text("a user's file")
    return tmp_path / "notes.txt" / "out"


def _in_unwritable(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("unwritable_dir") / "visionlab_out"


def _unwritable(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("unwritable_dir")


@pytest.mark.parametrize(
    "make_out",
    [_existing_file, _below_a_file, _in_unwritable, _unwritable],
    ids=["existing-file", "below-a-file", "cannot-create", "cannot-write"],
)
def test_out_that_cannot_hold_the_results_fails_before_the_model_loads(
    trained_run: Path,
    folder_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    request: pytest.FixtureRequest,
    no_model_load: None,
    make_out: Callable[[Path, pytest.FixtureRequest], Path],
) -> None:
    out = make_out(tmp_path, request)
    files_before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    image = str(folder_dataset / "val" / "red" / "0.png")
    assert main(["predict", _ckpt(trained_run), image, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("visionlab predict: error: ")
    assert str(out) in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files_before


# --- 4. unreadable images are skipped, named, and counted --------------------------------


def test_unreadable_images_are_skipped_with_a_warning(
    trained_run: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = _copy_images(folder_dataset, tmp_path / "images")
    (images / "garbage.png").write_bytes(b"these bytes are not a PNG")
    (images / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["predict", _ckpt(trained_run), str(images), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 2
    for name in ("garbage.png", "empty.jpg"):
        (line,) = [w for w in warnings if name in w]
        assert "not an image file Pillow can read" in line
    payload = _payload(out)
    assert [Path(r["file"]).name for r in payload["predictions"]] == ["0.png", "1.png", "2.png"]
    assert {Path(s["file"]).name for s in payload["skipped"]} == {"garbage.png", "empty.jpg"}
    assert all(s["reason"] == "not an image file Pillow can read" for s in payload["skipped"])
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith("3 images predicted: ")
    assert summary.endswith("; 2 unreadable files skipped")


def test_an_image_that_fails_to_decode_is_skipped(
    trained_run: Path, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = _copy_images(folder_dataset, tmp_path / "images", n=2)
    data = (images / "0.png").read_bytes()
    (images / "cut.png").write_bytes(data[: len(data) // 2])
    assert image_size(images / "cut.png") == (20, 24)  # the header reads: load_image fails
    out = tmp_path / "out"
    assert main(["predict", _ckpt(trained_run), str(images), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    (warning,) = [line for line in captured.err.splitlines() if "warning" in line]
    assert "cut.png" in warning and "truncated" in warning
    payload = _payload(out)
    assert [Path(r["file"]).name for r in payload["predictions"]] == ["0.png", "1.png"]
    assert [Path(s["file"]).name for s in payload["skipped"]] == ["cut.png"]
    assert captured.out.strip().endswith("; 1 unreadable file skipped")


def test_no_readable_input_is_an_error(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_model_load: None
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"garbage")
    (images / "b.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["predict", _ckpt(trained_run), str(images), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("visionlab predict: error: ")
    assert "no readable image" in err and str(images / "a.png") in err
    assert not out.exists()


# --- 5. numeric options are checked by argparse ------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--topk", "-1"),
        ("--topk", "0"),
        ("--batch-size", "0"),
        ("--score-threshold", "1.5"),
        ("--score-threshold", "-0.1"),
        ("--score-threshold", "nan"),
    ],
)
def test_out_of_range_options_are_usage_errors(
    trained_run: Path,
    folder_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    option: str,
    value: str,
) -> None:
    image = str(folder_dataset / "val" / "red" / "0.png")
    argv = ["predict", _ckpt(trained_run), image, "--out", str(tmp_path / "o"), option, value]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and value in err
    assert not (tmp_path / "o").exists()
