"""Visual-relationship data: the VRD and Visual Genome readers on hand-written file sets, and
the relationship rule every reader shares (subject != object, known predicate, known objects),
through `load_dataset` and `visionlab data check`."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from visionlab.cli import main
from visionlab.data import coco, vg, vrd
from visionlab.data.check import check_dataset
from visionlab.data.datasets import detect_format, list_splits, load_dataset
from visionlab.errors import DataError


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------- VRD


def _vrd_object(category: int, ymin: int, ymax: int, xmin: int, xmax: int) -> dict[str, Any]:
    return {"category": category, "bbox": [ymin, ymax, xmin, xmax]}


def vrd_train() -> dict[str, Any]:
    """a.jpg (60x40): a person (repeated in both relationships: one object) rides a horse
    whose box reaches the image's last row and column, and wears a hat; b.jpg: none."""
    person = _vrd_object(0, 5, 30, 10, 20)
    return {
        "a.jpg": [
            {"predicate": 0, "subject": person, "object": _vrd_object(1, 15, 39, 0, 59)},
            {"predicate": 1, "subject": person, "object": _vrd_object(2, 2, 6, 12, 18)},
        ],
        "b.jpg": [],
    }


@pytest.fixture
def vrd_root(tmp_path: Path, make_image) -> Path:
    root = tmp_path / "vrd"
    write_json(root / "objects.json", ["person", "horse", "hat"])
    write_json(root / "predicates.json", ["ride", "wear", "next to"])
    write_json(root / "annotations_train.json", vrd_train())
    test = {"c.jpg": [{"predicate": 2, "subject": _vrd_object(2, 0, 4, 0, 4),
                       "object": _vrd_object(1, 5, 9, 5, 9)}]}  # fmt: skip
    write_json(root / "annotations_test.json", test)
    make_image(root / "sg_dataset" / "sg_train_images" / "a.jpg", 60, 40)
    make_image(root / "sg_dataset" / "sg_train_images" / "b.jpg", 30, 20)
    make_image(root / "sg_dataset" / "sg_test_images" / "c.jpg", 10, 10)
    return root


def _edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_vrd_reads_boxes_objects_and_relations(vrd_root: Path) -> None:
    assert detect_format(vrd_root) == "vrd" and list_splits(vrd_root, "vrd") == ["train", "test"]
    ds = load_dataset(vrd_root, "train", task="detection")
    assert ds.format == "vrd" and len(ds) == 2
    assert ds.classes == ["person", "horse", "hat"]
    assert ds.predicates == ["ride", "wear", "next to"]
    target = ds.annotations(0)
    assert target["file_name"] == "a.jpg" and target["orig_size"] == (40, 60)  # from the header
    # [ymin, ymax, xmin, xmax] inclusive -> (xmin, ymin, xmax + 1, ymax + 1); the horse's
    # xmax + 1 = 60 and ymax + 1 = 40 are the image's edges
    expected = [[10, 5, 21, 31], [0, 15, 60, 40], [12, 2, 19, 7]]
    assert target["boxes"].tolist() == expected
    assert target["labels"].tolist() == [1, 2, 3]  # category + 1; the person once
    assert target["relations"].tolist() == [[0, 0, 1], [0, 1, 2]]
    empty = ds.annotations(1)
    assert empty["boxes"].shape == (0, 4) and empty["relations"].shape == (0, 3)
    image, _ = ds[0]
    assert image.shape == (3, 40, 60)
    test = load_dataset(vrd_root, "test")
    assert test.annotations(0)["relations"].tolist() == [[0, 2, 1]]


def test_vrd_other_image_folders(vrd_root: Path) -> None:
    (vrd_root / "sg_dataset" / "sg_train_images").rename(vrd_root / "train_images")
    assert len(load_dataset(vrd_root, "train")) == 2
    (vrd_root / "images").mkdir()
    (vrd_root / "train_images").rename(vrd_root / "images" / "train")
    assert load_dataset(vrd_root, "train").record(0).path == vrd_root / "images/train/a.jpg"
    (vrd_root / "images" / "train").rename(vrd_root / "elsewhere")
    with pytest.raises(DataError, match=r"no images folder; looked for .*sg_train_images"):
        load_dataset(vrd_root, "train")


def test_vrd_missing_image_is_an_error(vrd_root: Path) -> None:
    (vrd_root / "sg_dataset" / "sg_train_images" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"b\.jpg \[b\.jpg\]: image file not found"):
        load_dataset(vrd_root, "train")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rels: rels[1].update(object=rels[1]["subject"]), "subject and object are the same"),
        (lambda rels: rels[1].update(predicate=7), r"unknown predicate 7 \(known: 0\.\.2\)"),
        (lambda rels: rels[1]["object"].update(category=5), "unknown category 5"),
        (lambda rels: rels[1]["object"].update(bbox=[2, 6, 18, 12]), "box has negative width"),
        (lambda rels: rels[1].pop("predicate"), "a relationship needs a predicate"),
    ],
)
def test_vrd_bad_relationships(vrd_root: Path, edit, message: str) -> None:
    _edit_json(vrd_root / "annotations_train.json", lambda d: edit(d["a.jpg"]))
    with pytest.raises(
        DataError, match=r"annotations_train\.json \[a\.jpg\[1\][^\]]*\]: " + message
    ):
        load_dataset(vrd_root, "train", task="detection")


# ----------------------------------------------------------------------------- Visual Genome


def _vg(object_id: int, x: int, y: int, w: int, h: int, name: str, key="names") -> dict:
    return {"object_id": object_id, "x": x, "y": y, "w": w, "h": h,
            key: [name] if key == "names" else name}  # fmt: skip


def _rel(rid: int, predicate: str, subject: dict, obj: dict) -> dict:
    return {"relationship_id": rid, "predicate": predicate, "subject": subject, "object": obj}


MAN, HORSE = _vg(10, 2, 3, 10, 8, "  Man "), _vg(11, 20, 5, 15, 20, "horse")
SIGN = _vg(12, 0, 0, 5, 5, "images")  # a class named like COCO's key: still not COCO
HAT = _vg(13, 4, 1, 6, 3, "Hat", key="name")  # only in relationships.json
CUP, TABLE = _vg(20, 1, 1, 10, 10, "cup"), _vg(21, 0, 10, 30, 20, "Table")


@pytest.fixture
def vg_root(tmp_path: Path, make_image) -> Path:
    """Image 1 (50x40, size in image_data.json) in VG_100K/, image 2 (30x30, size from its
    header) in VG_100K_2/."""
    root = tmp_path / "vg"
    make_image(root / "VG_100K" / "1.jpg", 50, 40)
    make_image(root / "VG_100K_2" / "2.jpg", 30, 30)
    objects = [
        {"image_id": 1, "objects": [MAN, HORSE, SIGN]},
        {
            "image_id": 2,
            "objects": [CUP, _vg(22, 0, 0, 4, 4, "tree"), _vg(23, 1, 1, 2, 2, "IMAGES")],
        },
    ]
    relationships = [
        {"image_id": 1, "relationships": [
            _rel(100, " Riding ", MAN, HORSE),
            _rel(101, "WEARS", MAN, HAT),
            _rel(102, "riding", SIGN, HORSE),
            _rel(103, "near", MAN, HORSE),
        ]},
        {"image_id": 2, "relationships": [
            _rel(200, "on", CUP, TABLE), _rel(201, "near", CUP, TABLE),
        ]},
    ]  # fmt: skip
    write_json(root / "objects.json", objects)
    write_json(root / "relationships.json", relationships)
    write_json(root / "image_data.json", [{"image_id": 1, "width": 50, "height": 40, "url": ""}])
    return root


def test_vg_reads_objects_relations_and_normalises_names(vg_root: Path) -> None:
    assert detect_format(vg_root) == "vg" and list_splits(vg_root, "vg") == ["all"]
    ds = load_dataset(vg_root, "all", task="detection")
    assert ds.format == "vg" and ds.split == "all" and len(ds) == 2
    assert ds.classes == ["cup", "hat", "horse", "images", "man", "table", "tree"]
    assert ds.predicates == ["near", "on", "riding", "wears"]
    first = ds.annotations(0)
    assert first["image_id"] == 1 and first["orig_size"] == (40, 50)
    names = [ds.classes[k - 1] for k in first["labels"].tolist()]
    assert names == ["man", "horse", "images", "hat"]  # the hat added from relationships.json
    assert first["boxes"][3].tolist() == [4, 1, 10, 4]
    assert first["relations"].tolist() == [[0, 2, 1], [0, 3, 3], [2, 2, 1], [0, 0, 1]]
    second = ds.annotations(1)
    assert second["orig_size"] == (30, 30) and ds.record(1).path.parent.name == "VG_100K_2"
    assert [ds.classes[k - 1] for k in second["labels"].tolist()] == [
        "cup", "tree", "images", "table",
    ]  # fmt: skip
    assert second["relations"].tolist() == [[0, 1, 3], [0, 0, 3]]
    assert len(load_dataset(vg_root, "train")) == 2  # "train" reads the one split too


def test_vg_vocabulary_files_filter_with_one_counted_warning_each(vg_root: Path, caplog) -> None:
    (vg_root / "classes.txt").write_text("man\nHorse \nhat\n\ncup\ntable\n")
    (vg_root / "predicates.txt").write_text("riding\nwears\non\n")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(vg_root, "all", task="detection")
    assert ds.classes == ["man", "horse", "hat", "cup", "table"]
    assert ds.predicates == ["riding", "wears", "on"]
    first, second = ds.annotations(0), ds.annotations(1)
    assert first["labels"].tolist() == [1, 2, 3]
    assert first["relations"].tolist() == [[0, 0, 1], [0, 1, 2]]
    assert second["labels"].tolist() == [4, 5] and second["relations"].tolist() == [[0, 2, 1]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for expected in (
        "classes.txt: 3 objects of classes not in classes.txt skipped ('images', 'tree')",
        "predicates.txt: 2 relationships with predicates not in predicates.txt dropped ('near')",
        "relationships.json: 1 relationships with a skipped subject or object dropped",
    ):
        assert sum(expected in w for w in warnings) == 1, (expected, warnings)
    assert len(warnings) == 3


def test_vg_self_relationships_are_dropped_with_one_counted_warning(vg_root, caplog):
    rels = vg_root / "relationships.json"
    _edit_json(rels, lambda d: d[0]["relationships"][0].update(object=MAN))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(vg_root, "all")
    assert [0, 2, 0] not in ds.annotations(0)["relations"].tolist()
    assert len(ds.annotations(0)["relations"]) == 3  # the other three kept
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("1 relationships of an object with itself dropped" in w for w in warnings) == 1


def test_vg_errors_name_file_and_entry(vg_root: Path) -> None:
    (vg_root / "VG_100K_2" / "2.jpg").unlink()
    with pytest.raises(DataError, match=r"\[image_id=2\]: image file 2\.jpg not found in VG_100K/"):
        load_dataset(vg_root, "all")


# ----------------------------------------------------------------------------- detection


def test_formats_are_told_apart(vrd_root: Path, vg_root: Path, coco_root: Path) -> None:
    for module in (vrd, vg):
        assert not module.looks_like(coco_root)
    assert not coco.looks_like(vrd_root) and not coco.looks_like(vg_root)
    assert not vg.looks_like(vrd_root) and not vrd.looks_like(vg_root)
    write_json(coco_root / "relationships.json", [])  # a stray file does not make COCO VG
    assert detect_format(coco_root) == "coco"


# ----------------------------------------------------------------------------- the rule


COCO_CASES = [
    ({"object_id": 1}, r"subject and object are the same object 1"),
    ({"predicate_id": 9}, r"unknown predicate 9 \(known: 1\.\.2\)"),
    ({"object_id": 42}, r"relationship refers to unknown object 42"),
]


@pytest.mark.parametrize(("change", "message"), COCO_CASES)
def test_coco_relationship_errors(coco_root: Path, change: dict, message: str) -> None:
    ann = coco_root / "annotations" / "instances_train.json"
    _edit_json(ann, lambda d: d["relationships"][0].update(change))
    with pytest.raises(
        DataError, match=r"instances_train\.json \[relationships\[0\]\]: " + message
    ):
        load_dataset(coco_root, "train", task="detection")


@pytest.mark.parametrize(("change", "message"), COCO_CASES)
def test_check_reports_relationship_errors(coco_root: Path, capsys, change, message) -> None:
    ann = coco_root / "annotations" / "instances_train.json"
    _edit_json(ann, lambda d: d["relationships"][0].update(change))
    assert main(["data", "check", str(coco_root), "--split", "train", "--no-decode"]) == 1
    out = capsys.readouterr().out
    assert "errors: 1" in out and "FAILED" in out
    line = next(s for s in out.splitlines() if "[relationships[0]]" in s)
    assert "instances_train.json [relationships[0]]: " in line
    assert re.search(message, line), line
    assert "relationships: 1\n" in out  # the other one is still read
    assert "relationships per predicate: left of 0, near 1" in out


def test_check_counts_relationships(coco_root: Path, vrd_root: Path, capsys) -> None:
    assert main(["data", "check", str(coco_root), "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "  relationships: 2\n" in out
    assert "  relationships per predicate: left of 1, near 1" in out
    report = check_dataset(vrd_root, progress=False)
    assert report.ok and [s.relationships for s in report.splits] == [2, 1]
    assert report.splits[0].per_predicate == {"ride": 1, "wear": 1, "next to": 0}


def test_check_lists_every_relationship_problem_of_vrd(vrd_root: Path) -> None:
    def edit(data: dict) -> None:
        data["a.jpg"][0]["predicate"] = 5
        data["a.jpg"][1]["object"] = data["a.jpg"][1]["subject"]

    _edit_json(vrd_root / "annotations_train.json", edit)
    report = check_dataset(vrd_root, ["train"], progress=False)
    found = [str(e) for e in report.errors]
    assert len(found) == 2
    assert "annotations_train.json [a.jpg[0]]: unknown predicate 5" in found[0]
    assert "annotations_train.json [a.jpg[1]]: subject and object are the same" in found[1]
    assert report.splits[0].relationships == 0


def test_vrd_and_vg_convert_to_coco_with_their_relationships(vrd_root, vg_root, tmp_path) -> None:
    from visionlab.data.convert import convert_dataset

    for name, root, split in (("vrd", vrd_root, "train"), ("vg", vg_root, "all")):
        out = tmp_path / f"{name}-coco"
        convert_dataset(root, out, to="coco", progress=False)
        source, copy = load_dataset(root, split), load_dataset(out, split)
        assert copy.classes == source.classes and copy.predicates == source.predicates
        for i in range(len(source)):
            a, b = source.annotations(i), copy.annotations(i)
            assert a["boxes"].tolist() == b["boxes"].tolist()
            assert a["relations"].tolist() == b["relations"].tolist()
