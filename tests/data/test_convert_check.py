"""`visionlab data convert | check | scenes | show`: round trips, warnings about what a format
drops, output safety, and check reporting every problem."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

from visionlab.cli import main
from visionlab.data.check import check_dataset
from visionlab.data.convert import convert_dataset
from visionlab.data.datasets import load_dataset
from visionlab.errors import DataError


def _by_stem(dataset) -> dict[str, dict]:
    """Targets keyed by image stem (VOC renames clashing names to STEM_ID)."""
    out = {}
    for i in range(len(dataset)):
        stem = re.sub(r"_\d+$", "", Path(dataset.record(i).file_name).stem)
        out[stem] = dataset.annotations(i)
    return out


def _same_objects(a, b, classes_a, classes_b, tol: float) -> None:
    assert a.keys() == b.keys()
    for stem in a:
        ta, tb = a[stem], b[stem]
        names_a = [classes_a[k - 1] for k in ta["labels"].tolist()]
        names_b = [classes_b[k - 1] for k in tb["labels"].tolist()]
        assert names_a == names_b, stem
        assert torch.allclose(ta["boxes"], tb["boxes"], atol=tol), stem


@pytest.fixture(scope="module")
def chain(scenes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """scenes -> COCO -> VOC -> YOLO -> COCO, once for the module."""
    out = tmp_path_factory.mktemp("chain")
    paths = {"scenes": scenes_root}
    previous = scenes_root
    for name, fmt in (("coco", "coco"), ("voc", "voc"), ("yolo", "yolo"), ("coco2", "coco")):
        paths[name] = out / name
        convert_dataset(previous, paths[name], to=fmt, progress=False)
        previous = paths[name]
    return paths


@pytest.mark.parametrize("split", ["train", "val"])
def test_round_trip_keeps_boxes_and_labels(chain: dict[str, Path], split: str) -> None:
    source = load_dataset(chain["scenes"], split)
    reference = _by_stem(source)
    assert sum(t["boxes"].shape[0] for t in reference.values()) > 5
    for name in ("coco", "voc", "yolo", "coco2"):
        ds = load_dataset(chain[name], split)
        assert ds.classes == source.classes, name
        _same_objects(reference, _by_stem(ds), source.classes, ds.classes, tol=1.0)
    exact = load_dataset(chain["coco"], split)  # COCO -> COCO loses nothing
    _same_objects(reference, _by_stem(exact), source.classes, exact.classes, tol=1e-3)
    assert exact.predicates == source.predicates
    assert [t["relations"].tolist() for t in _by_stem(exact).values()] == [
        t["relations"].tolist() for t in reference.values()
    ]


def test_masks_survive_coco_and_voc(chain: dict[str, Path]) -> None:
    source = load_dataset(chain["scenes"], "train", task="instance")
    for name in ("coco", "voc"):
        ds = load_dataset(chain[name], "train", task="instance")
        assert len(ds) == len(source)
        for i in range(len(ds)):
            assert torch.equal(ds.annotations(i)["masks"], source.annotations(i)["masks"]), name
    semantic = load_dataset(chain["voc"], "train", task="segmentation").annotations(0)
    expected = load_dataset(chain["scenes"], "train", task="segmentation").annotations(0)
    assert torch.equal(semantic["semantic"], expected["semantic"])


def test_convert_warns_once_about_what_is_dropped(scenes_root: Path, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        notes = convert_dataset(scenes_root, tmp_path / "voc", to="voc", progress=False)
    assert notes == ["voc: relationships are not written (VOC has none)"]
    assert caplog.text.count("relationships are not written") == 1
    notes = convert_dataset(scenes_root, tmp_path / "yolo", to="yolo", progress=False)
    assert any("instance masks are not written" in n for n in notes)
    assert any("relationships" in n for n in notes)


def test_coco_to_voc_and_yolo_notes_crowd_and_difficult(coco_root: Path, tmp_path) -> None:
    notes = convert_dataset(coco_root, tmp_path / "voc", to="voc", progress=False)
    assert any("crowd" in n and "difficult" in n for n in notes)
    voc = load_dataset(tmp_path / "voc", "train")
    assert voc.classes == ["cat", "dog", "bird"]  # order kept by labelmap.txt
    assert voc.annotations(1)["difficult"].tolist() == [True]
    notes = convert_dataset(tmp_path / "voc", tmp_path / "back", to="coco", progress=False)
    assert any("difficult" in n for n in notes)
    back = load_dataset(tmp_path / "back", "train")
    assert back.annotations(1)["difficult"].tolist() == [True]
    notes = convert_dataset(coco_root, tmp_path / "yolo", to="yolo", progress=False)
    assert any("crowd annotations (iscrowd=1) are dropped" in n for n in notes)
    assert load_dataset(tmp_path / "yolo", "train").annotations(1)["boxes"].shape == (0, 4)


def test_coco_to_coco_keeps_category_ids_crowd_and_masks(coco_root: Path, tmp_path) -> None:
    assert convert_dataset(coco_root, tmp_path / "out", to="coco", progress=False) == []
    data = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())
    assert [c["id"] for c in data["categories"]] == [3, 7, 12]
    a = load_dataset(coco_root, "train", task="instance")
    b = load_dataset(tmp_path / "out", "train", task="instance")
    for i in range(len(a)):
        ta, tb = a.annotations(i), b.annotations(i)
        for key in ("boxes", "labels", "iscrowd", "masks", "relations"):
            assert torch.equal(ta[key], tb[key]), key
    assert (tmp_path / "out" / "images" / "val" / "d.png").is_file()


def test_yolo_segments_write_polygons(scenes_root: Path, tmp_path) -> None:
    convert_dataset(scenes_root, tmp_path / "seg", to="yolo", segments=True, progress=False)
    source = load_dataset(scenes_root, "train", task="instance")
    ds = load_dataset(tmp_path / "seg", "train", task="instance")
    ious = []
    for i in range(len(ds)):
        ma, mb = source.annotations(i)["masks"], ds.annotations(i)["masks"]
        assert ma.shape == mb.shape
        inter, union = (ma & mb).sum((1, 2)), (ma | mb).sum((1, 2))
        ious += (inter / union).tolist()
    assert len(ious) > 5 and sum(ious) / len(ious) > 0.6


def test_convert_is_safe_for_source_and_destination(coco_root: Path, tmp_path, digest) -> None:
    before = digest(coco_root)
    out = tmp_path / "out"
    convert_dataset(coco_root, out, to="yolo", progress=False)
    assert digest(coco_root) == before
    with pytest.raises(DataError, match="not empty"):
        convert_dataset(coco_root, out, to="yolo", progress=False)
    convert_dataset(coco_root, out, to="voc", overwrite=True, progress=False)  # our own output
    assert (out / "Annotations").is_dir() and not (out / "labels").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="did not write"):
        convert_dataset(coco_root, foreign, to="coco", overwrite=True, progress=False)
    assert (foreign / "keep.txt").read_text() == "precious"
    with pytest.raises(DataError, match="outside the source"):
        convert_dataset(coco_root, coco_root / "converted", to="coco", progress=False)
    assert digest(coco_root) == before
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_convert_failure_leaves_no_output(coco_root: Path, tmp_path) -> None:
    path = coco_root / "annotations" / "instances_val.json"
    path.write_text(path.read_text().replace('"category_id": 12', '"category_id": 99'))
    with pytest.raises(DataError, match="unknown category id 99"):
        convert_dataset(coco_root, tmp_path / "out", to="voc", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]  # no output, no partial


def test_convert_refuses_image_folders(folder_root: Path, tmp_path) -> None:
    with pytest.raises(DataError, match="classification"):
        convert_dataset(folder_root, tmp_path / "out", to="coco", progress=False)


# ----------------------------------------------------------------------------- check


def test_check_clean_dataset(scenes_root: Path, capsys) -> None:
    assert main(["data", "check", str(scenes_root)]) == 0
    out = capsys.readouterr().out
    assert "split train: 10 images" in out and "split val: 4 images" in out
    assert "objects per class: circle" in out and "errors: 0" in out and out.rstrip().endswith("OK")


def test_check_lists_every_problem_and_fails(coco_root: Path, capsys) -> None:
    path = coco_root / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 99  # unknown category
    data["annotations"][1]["bbox"] = [30, 20, 20, 20]  # outside: clipped, a warning
    data["annotations"].append({"id": 5, "image_id": 12, "category_id": 3, "bbox": [1, 1, 2, 2]})
    data["annotations"].append(
        {"id": 6, "image_id": 12, "category_id": 3, "bbox": [float("nan"), 1, 2, 2]}
    )
    data["images"].append({"id": 13, "file_name": "gone.png", "width": 5, "height": 5})
    path.write_text(json.dumps(data))
    (coco_root / "images" / "train" / "b.png").write_bytes(b"corrupt")
    assert main(["data", "check", str(coco_root), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "split val" not in out
    for expected in (
        "[annotation id=1]: unknown category id 99",
        "[annotation id=5]: duplicate annotation id 5",
        "[annotation id=6]: box has NaN",
        "gone.png [image id=13]: image file not found",
        "b.png [image_id=11 in instances_train.json]: not an image",
        "[annotation id=2]: box [30.0, 20.0, 50.0, 40.0] reaches",
    ):
        assert expected in out, expected
    # dropped silently along with the object in error
    assert "relationship" not in out.split("\nerrors:")[1]
    assert "errors: 5" in out and "warnings: 1" in out and "FAILED" in out


def test_check_reports_unreadable_split_and_other_formats(voc_root, yolo_root, folder_root) -> None:
    (voc_root / "Annotations" / "img2.xml").write_text("<annotation>")
    report = check_dataset(voc_root, progress=False)
    assert [s.read for s in report.splits] == [True, True]
    assert len(report.errors) == 2  # malformed XML, and val then misses it
    assert "img2.xml: malformed XML" in str(report.errors[0])
    (yolo_root / "labels" / "train" / "x.txt").write_text("7 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n")
    (yolo_root / "labels" / "train" / "orphan.txt").write_text("")
    report = check_dataset(yolo_root, ["train"], progress=False)
    assert len(report.errors) == 2 and len(report.warnings) == 1
    assert "orphan.txt" in str(report.warnings[0])
    report = check_dataset(folder_root, progress=False)
    assert report.ok and report.splits[0].per_class == {"bird": 0, "cat": 2, "dog": 1}
    assert "class has no images" in str(report.warnings[0])


# ----------------------------------------------------------------------------- CLI


def test_data_help_lists_the_four_actions(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for action in ("scenes", "convert", "check", "show"):
        assert action in out


def test_cli_scenes_convert_and_show(tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    args = ["data", "scenes", str(out), "--train", "1", "--val", "1", "--size", "32"]
    assert main(args) == 0
    assert len(load_dataset(out, "val")) == 1
    assert main(["data", "convert", str(out), str(tmp_path / "y"), "--to", "yolo"]) == 0
    assert (tmp_path / "y" / "data.yaml").is_file()
    assert main(["data", "convert", str(out), str(tmp_path / "y"), "--to", "yolo"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "show", str(out), "--out", str(tmp_path / "show"), "-n", "1"]) == 0
    printed = [Path(line) for line in capsys.readouterr().out.split()]
    assert printed and all(p.is_file() and p.suffix == ".png" for p in printed)
