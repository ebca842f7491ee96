"""The synthetic scenes dataset: COCO validity, masks, boxes, relationships, crops, determinism."""

from __future__ import annotations

import io
import json
import math
import threading
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from visionlab.data import scenes
from visionlab.data.scenes import (
    PREDICATES,
    SCENE_CLASSES,
    SCENE_COLORS,
    default_scenes_root,
    render_scenes,
    render_split,
    semantic_mask,
    write_crops,
)
from visionlab.data.scenes_draw import render_scene, shape_mask
from visionlab.data.scenes_io import CROP_MIN_SIDE, encode_png
from visionlab.errors import DataError, VisionLabError

SIZE = 96


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "ds"
    return render_scenes(out, n_train=20, n_val=4, size=SIZE, seed=3, progress=False, workers=1)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """120 images rendered in memory, for statistics over the generator."""
    return render_split("train", 120, size=128, seed=0, workers=1)


def _decode(ann: dict) -> np.ndarray:
    """pycocotools' decoding of one annotation's RLE, ``bool [H, W]``."""
    return mask_utils.decode([ann["segmentation"]])[:, :, 0].astype(bool)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_layout_and_coco_fields(root: Path) -> None:
    for split, n in (("train", 20), ("val", 4)):
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        assert len(data["images"]) == n == len(list((root / "images" / split).glob("*.png")))
        assert [c["id"] for c in data["categories"]] == list(range(1, len(SCENE_CLASSES) + 1))
        assert [c["name"] for c in data["categories"]] == list(SCENE_CLASSES)
        assert {c["supercategory"] for c in data["categories"]} == {"shape"}
        assert [p["name"] for p in data["predicates"]] == list(PREDICATES)
        assert data["info"]["arguments"] == {
            "n_train": 20,
            "n_val": 4,
            "size": SIZE,
            "seed": 3,
            "crop_size": 64,
        }
        for image in data["images"]:
            assert (root / "images" / split / image["file_name"]).is_file()
            assert "/" not in image["file_name"]
            assert (image["width"], image["height"]) == (SIZE, SIZE)
        ids = [a["id"] for a in data["annotations"]]
        assert len(ids) == len(set(ids))
        for ann in data["annotations"]:
            assert ann["iscrowd"] == 0 and ann["color"] in SCENE_COLORS
            assert isinstance(ann["segmentation"]["counts"], str)
            assert ann["segmentation"]["size"] == [SIZE, SIZE]
            assert all(isinstance(v, float) for v in ann["bbox"])
            assert 0.25 <= ann["visibility"] <= 1


def test_pycocotools_masks_areas_boxes_and_semantic(root: Path) -> None:
    coco = COCO(str(root / "annotations" / "instances_train.json"))
    n_annotations = 0
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        union = np.zeros((SIZE, SIZE), dtype=np.int64)
        expected = np.zeros((SIZE, SIZE), dtype=np.int64)
        for ann in anns:
            mask = _decode(ann)
            assert mask.sum() == ann["area"] > 0
            ys, xs = np.nonzero(mask)
            tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == [float(v) for v in tight]
            assert mask_utils.toBbox(ann["segmentation"]).tolist() == ann["bbox"]
            union += mask
            expected[mask] = ann["category_id"]
            n_annotations += 1
        assert union.max() <= 1  # instance masks of one image never overlap
        semantic = semantic_mask(anns, SIZE, SIZE)
        assert semantic.dtype == np.int64
        np.testing.assert_array_equal(semantic, expected)
        np.testing.assert_array_equal(semantic > 0, union > 0)
    assert n_annotations > 20


def test_masks_cover_pixels_of_the_annotated_colour(root: Path) -> None:
    """Under each mask the image shows the annotation's colour (up to jitter, shading and
    noise): masks, colours and pixels agree."""
    coco = COCO(str(root / "annotations" / "instances_train.json"))
    for image in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(root / "images" / "train" / image["file_name"]))
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])):
            values = pixels[_decode(ann)].astype(np.float64)
            rgb = np.asarray(SCENE_COLORS[ann["color"]], dtype=np.float64)
            assert np.abs(np.median(values, axis=0) - rgb).max() < 0.35 * 255


def test_relationships_reference_annotations_of_the_same_image(root: Path) -> None:
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    image_of = {a["id"]: a["image_id"] for a in data["annotations"]}
    per_image = Counter(a["image_id"] for a in data["annotations"])
    predicate_ids = {p["id"] for p in data["predicates"]}
    pairs = set()
    for rel in data["relationships"]:
        assert list(rel) == ["id", "image_id", "subject_id", "predicate_id", "object_id"]
        assert image_of[rel["subject_id"]] == image_of[rel["object_id"]] == rel["image_id"]
        assert rel["subject_id"] != rel["object_id"]
        assert rel["predicate_id"] in predicate_ids
        pairs.add((rel["subject_id"], rel["object_id"]))
    # every ordered pair of objects gets exactly one predicate
    assert len(pairs) == len(data["relationships"]) == sum(n * (n - 1) for n in per_image.values())


def test_predicates_follow_their_geometric_rules(records: list[dict]) -> None:
    seen = Counter()
    for record in records:
        anns = record["annotations"]
        for s, p, o in record["relations"]:
            name = PREDICATES[p]
            seen[name] += 1
            sx, sy, sw, sh = anns[s]["bbox"]
            ox, oy, ow, oh = anns[o]["bbox"]
            boxes_meet = min(sx + sw, ox + ow) > max(sx, ox) and min(sy + sh, oy + oh) > max(sy, oy)
            if name == "inside":
                assert sx >= ox and sy >= oy and sx + sw <= ox + ow and sy + sh <= oy + oh
            elif name == "overlapping":
                assert boxes_meet
            elif name == "bigger than":
                assert not boxes_meet and anns[s]["area"] >= 4 * anns[o]["area"]
            elif name == "left of":
                assert sx + sw <= ox
            elif name == "right of":
                assert sx >= ox + ow
            elif name == "above":
                assert sy + sh <= oy and not (sx + sw <= ox or sx >= ox + ow)
            elif name == "below":
                assert sy >= oy + oh
    assert set(seen) == set(PREDICATES), f"missing: {set(PREDICATES) - set(seen)}"


def test_statistics_counts_sizes_class_colour_independence(records: list[dict]) -> None:
    counts = [len(r["annotations"]) for r in records]
    assert min(counts) == 0 and max(counts) <= 8 and len(set(counts)) >= 6
    sides = [max(a["bbox"][2:]) for r in records for a in r["annotations"]]
    assert min(sides) <= 10 and max(sides) >= 0.4 * 128
    colours_of = defaultdict(set)
    for r in records:
        for a in r["annotations"]:
            colours_of[SCENE_CLASSES[a["category_id"] - 1]].add(a["color"])
    assert set(colours_of) == set(SCENE_CLASSES)
    assert all(len(c) >= 5 for c in colours_of.values()), colours_of
    occluded = [a["visibility"] < 0.9 for r in records for a in r["annotations"]]
    assert 0.05 < np.mean(occluded) < 0.6


def test_determinism_across_runs_and_worker_counts(root: Path, tmp_path: Path) -> None:
    again = render_scenes(
        tmp_path / "again", n_train=20, n_val=4, size=SIZE, seed=3, progress=False, workers=2
    )
    first, second = _files(root), _files(again)
    assert sorted(first) == sorted(second)
    assert all(first[name] == second[name] for name in first)
    other = render_split("train", 3, size=SIZE, seed=4, workers=1)
    assert other != render_split("train", 3, size=SIZE, seed=3, workers=1)


def test_crops_one_folder_per_class_and_rebuilt_from_coco(root: Path, tmp_path: Path) -> None:
    crops = root / "crops" / "train"
    assert sorted(p.name for p in crops.iterdir()) == sorted(SCENE_CLASSES)
    files = list(crops.rglob("*.png"))
    assert len(files) >= 10
    for f in files[:5]:
        assert Image.open(f).size == (64, 64)
    rebuilt = write_crops(root, tmp_path / "by_class", split="train", progress=False)
    assert _files(rebuilt) == _files(crops)
    by_colour = write_crops(root, tmp_path / "c", split="train", attribute="color", progress=False)
    assert sorted(p.name for p in by_colour.iterdir()) == sorted(SCENE_COLORS)
    assert sorted(p.name for p in by_colour.rglob("*.png")) == sorted(p.name for p in files)
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    small = [a for a in data["annotations"] if max(a["bbox"][2:]) < CROP_MIN_SIDE]
    names = {p.name for p in files}
    for ann in small:
        k = [a["id"] for a in data["annotations"] if a["image_id"] == ann["image_id"]]
        assert f"{ann['image_id']:06d}_{k.index(ann['id'])}.png" not in names


def test_bad_input_gives_clear_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not an empty folder"):
        render_scenes(root, n_train=1, n_val=0, progress=False)
    with pytest.raises(VisionLabError, match="size"):
        render_scenes(tmp_path / "x", size=16, progress=False)
    with pytest.raises(VisionLabError, match="n_train"):
        render_scenes(tmp_path / "x", n_train=-1, progress=False)
    with pytest.raises(DataError, match=r"instances_test\.json"):
        write_crops(root, tmp_path / "c", split="test", progress=False)
    with pytest.raises(VisionLabError, match="attribute"):
        write_crops(root, tmp_path / "c", split="train", attribute="shape", progress=False)
    broken = tmp_path / "broken"
    (broken / "annotations").mkdir(parents=True)
    (broken / "annotations" / "instances_train.json").write_text('{"images": []}')
    with pytest.raises(DataError, match=r"\[annotations\]"):
        write_crops(broken, tmp_path / "c2", split="train", progress=False)


def test_default_root_renders_once_even_when_raced(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VISIONLAB_HOME", str(tmp_path / "home"))
    small = {"n_train": 3, "n_val": 1, "size": 64, "seed": 0}
    monkeypatch.setattr(scenes, "DEFAULT_SCENES_ARGS", small)
    calls = []
    real = scenes.render_scenes
    monkeypatch.setattr(scenes, "render_scenes", lambda *a, **k: calls.append(1) or real(*a, **k))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(default_scenes_root(progress=False)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = tmp_path / "home" / "scenes-v1-s64-t3-v1-seed0"
    assert results == [expected] * 3 and len(calls) == 1
    assert (expected / ".complete").is_file()
    assert len(list((expected / "images" / "train").glob("*.png"))) == 3
    leftovers = [p.name for p in (tmp_path / "home").iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    assert default_scenes_root(progress=False) == expected and len(calls) == 1


def test_png_writer_round_trips_through_pillow() -> None:
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 3), (5, 7, 3), (33, 20, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))))
        np.testing.assert_array_equal(decoded, image)
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), dtype=np.uint8))


@pytest.mark.parametrize(
    ("kind", "area_over_r2"),
    [
        ("circle", math.pi),
        ("ring", math.pi * (1 - 0.55**2)),
        ("square", 2.0),
        ("triangle", 3 * math.sqrt(3) / 4),
        ("hexagon", 3 * math.sqrt(3) / 2),
        # star: 10 triangles centre-outer-inner, each r * 0.45 r * sin(36 deg) / 2
        ("star", 10 * 0.45 * math.sin(math.pi / 5) / 2),
        # cross: two 2a x 2w bars minus their 2w x 2w overlap, w = 0.3 r
        ("cross", 8 * 0.3 * math.sqrt(1 - 0.09) - 4 * 0.09),
    ],
)
def test_shape_areas_match_geometry(kind: str, area_over_r2: float) -> None:
    r = 40.0
    _, _, mask = shape_mask(kind, 2 * r, 50.3, 47.8, 0.7)
    assert mask.sum() == pytest.approx(area_over_r2 * r * r, rel=0.03)
    assert mask.shape[0] <= 2 * r + 3 and mask.shape[1] <= 2 * r + 3


def test_render_scene_objects_agree_with_the_instance_map() -> None:
    scene = render_scene(64, 5, "val", 2)
    assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
    assert scene.instance_map.max() == len(scene.objects) > 0
    for k, obj in enumerate(scene.objects):
        mask = obj.visible_mask(64, 64)
        np.testing.assert_array_equal(mask, scene.instance_map == k + 1)
        ys, xs = np.nonzero(mask)
        assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert obj.visible_area == mask.sum() and 0.25 <= obj.visibility <= 1
    again = render_scene(64, 5, "val", 2)
    np.testing.assert_array_equal(scene.image, again.image)
    assert scene.relations == again.relations
