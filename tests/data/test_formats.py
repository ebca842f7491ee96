"""Each reader on tiny hand-made data, format detection, splits and the sample contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visionlab.data import datasets
from visionlab.data.datasets import detect_format, list_splits, load_dataset, match_split
from visionlab.errors import DataError


def _check_detection_contract(dataset, i: int = 0) -> dict:
    image, target = dataset[i]
    assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
    assert image.min() >= 0.0 and image.max() <= 1.0
    n = target["boxes"].shape[0]
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    assert target["labels"].dtype == torch.int64 and target["labels"].shape == (n,)
    assert target["iscrowd"].dtype == torch.int64 and target["difficult"].dtype == torch.bool
    assert target["relations"].dtype == torch.int64 and target["relations"].shape[1] == 3
    assert target["orig_size"] == tuple(image.shape[1:])
    if n:
        assert target["labels"].min() >= 1 and target["labels"].max() <= len(dataset.classes)
    plain = dataset.annotations(i)
    assert set(plain) == set(target)
    assert torch.equal(plain["boxes"], target["boxes"])
    return target


# ----------------------------------------------------------------------------- COCO


def test_coco_categories_become_contiguous_labels_with_names(coco_root: Path) -> None:
    ds = load_dataset(coco_root, "train")
    assert ds.format == "coco" and ds.split == "train" and len(ds) == 3
    assert ds.classes == ["cat", "dog", "bird"]  # sorted by category id 3, 7, 12
    assert ds.category_ids == [3, 7, 12]
    target = _check_detection_contract(ds, 0)
    assert target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[2, 3, 12, 11], [15, 5, 25, 15]]
    assert target["image_id"] == 10 and target["file_name"] == "a.png"


def test_coco_relations_and_predicates(coco_root: Path) -> None:
    ds = load_dataset(coco_root, "train")
    assert ds.predicates == ["left of", "near"]
    assert ds.annotations(0)["relations"].tolist() == [[0, 0, 1], [1, 1, 0]]
    assert ds.annotations(1)["relations"].shape == (0, 3)


def test_coco_image_without_annotations_and_crowd(coco_root: Path) -> None:
    ds = load_dataset(coco_root, "train")
    empty = _check_detection_contract(ds, 2)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    crowd = ds.annotations(1)
    assert crowd["iscrowd"].tolist() == [1] and crowd["labels"].tolist() == [3]


def test_coco_masks_from_polygon_rle_and_uncompressed_rle(coco_root: Path) -> None:
    ds = load_dataset(coco_root, "train", task="instance")
    _, target = ds[0]
    masks = target["masks"]
    assert masks.dtype == torch.bool and masks.shape == (2, 30, 40)
    assert masks[1].sum() == 100 and masks[1, 5:15, 15:25].all()  # RLE rectangle
    assert masks[0, 4:10, 3:11].all() and not masks[0, 20:, :].any()  # polygon
    crowd = ds.annotations(1)["masks"]
    assert crowd.shape == (1, 30, 40) and crowd[0].sum() == 200 and crowd[0, :10, :20].all()
    assert ds.annotations(2)["masks"].shape == (0, 32, 32)


def test_coco_semantic_paints_classes_and_ignores_crowd(coco_root: Path) -> None:
    ds = load_dataset(coco_root, "train", task="segmentation")
    _, target = ds[0]
    semantic = target["semantic"]
    assert semantic.dtype == torch.int64 and semantic.shape == (30, 40)
    assert semantic[7, 20] == 2 and semantic[6, 5] == 1 and semantic[25, 35] == 0
    assert set(ds.annotations(1)["semantic"].unique().tolist()) == {0, 255}


def test_coco_json_file_directly_and_images_dir(coco_root: Path, tmp_path: Path) -> None:
    ann = coco_root / "annotations" / "instances_val.json"
    ds = load_dataset(ann, "val", images=coco_root / "images" / "val")
    assert len(ds) == 1 and ds.record(0).path == coco_root / "images" / "val" / "d.png"
    # a json next to its images needs no --images
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "d.png").write_bytes((coco_root / "images" / "val" / "d.png").read_bytes())
    (flat / "annotations.json").write_text(ann.read_text())
    assert detect_format(flat) == "coco" and list_splits(flat, "coco") == ["all"]
    assert len(load_dataset(flat)) == 1
    assert len(load_dataset(flat / "annotations.json")) == 1


# ----------------------------------------------------------------------------- VOC


def test_voc_boxes_difficult_and_standard_classes(voc_root: Path) -> None:
    ds = load_dataset(voc_root, "train")
    assert ds.format == "voc" and len(ds.classes) == 20 and ds.classes[14] == "person"
    target = _check_detection_contract(ds, 0)
    assert target["labels"].tolist() == [15, 12]  # person, dog (standard VOC order)
    assert target["boxes"].tolist() == [[4, 5, 20, 25], [24, 2, 40, 30]]  # 1-based -> 0-based
    assert target["difficult"].tolist() == [False, True]
    assert ds.annotations(0)["file_name"] == "img1.jpg"


def test_voc_splits_skip_per_class_lists(voc_root: Path) -> None:
    assert list_splits(voc_root, "voc") == ["train", "val"]
    val = load_dataset(voc_root, "val")
    assert len(val) == 1 and val.annotations(0)["labels"].tolist() == [7]  # car


def test_voc_nonstandard_names_are_sorted(voc_root: Path) -> None:
    xml = voc_root / "Annotations" / "img2.xml"
    xml.write_text(xml.read_text().replace("<name>car</name>", "<name>zebra crossing</name>"))
    ds = load_dataset(voc_root, "val")
    assert ds.classes == ["dog", "person", "zebra crossing"]  # from all XML files, sorted
    assert ds.annotations(0)["labels"].tolist() == [3]


def test_voc_labelmap_is_the_source_of_truth(voc_root: Path) -> None:
    (voc_root / "labelmap.txt").write_text("background:0,0,0::\nperson:1,2,3::\ndog:::\ncar:::\n")
    ds = load_dataset(voc_root, "train")
    assert ds.classes == ["person", "dog", "car"]
    assert ds.annotations(0)["labels"].tolist() == [1, 2]


def test_voc_segmentation_class_png_keeps_ignore(voc_root: Path) -> None:
    ds = load_dataset(voc_root, "train", task="segmentation")
    _, target = ds[0]
    semantic = target["semantic"]
    assert semantic.shape == (32, 48) and semantic.dtype == torch.int64
    assert semantic[10, 10] == 15 and semantic[10, 30] == 12 and semantic[0, 0] == 0
    assert semantic[5, 10] == 255


def test_voc_instance_masks_from_segmentation_object(voc_root: Path) -> None:
    ds = load_dataset(voc_root, "train", task="instance")
    masks = ds.annotations(0)["masks"]
    assert masks.shape == (2, 32, 48)
    assert masks[0].sum() == 19 * 15 and masks[1].sum() == 27 * 15
    assert not masks[:, 5, 10].any()  # boundary (255) belongs to no object
    assert not (masks[0] & masks[1]).any()


def test_voc_under_vocdevkit_folder(voc_root: Path) -> None:
    devkit = voc_root.parent
    assert detect_format(devkit) == "voc"
    assert len(load_dataset(devkit, "train")) == 1


# ----------------------------------------------------------------------------- YOLO


def test_yolo_boxes_polygons_and_missing_label_file(yolo_root: Path) -> None:
    ds = load_dataset(yolo_root, "train")
    assert ds.format == "yolo" and ds.classes == ["cat", "dog"]
    target = _check_detection_contract(ds, 0)
    assert target["labels"].tolist() == [1, 2]
    expected = torch.tensor([[20.0, 15.0, 30.0, 25.0], [5.0, 4.0, 15.0, 16.0]])
    assert torch.allclose(target["boxes"], expected, atol=1e-4)
    assert ds.annotations(1)["boxes"].shape == (0, 4)  # y.jpg has no label file
    assert ds.record(0).segments[1] is not None and ds.record(0).segments[0] is None


def test_yolo_txt_list_split_and_names_list(yolo_root: Path) -> None:
    (yolo_root / "data.yaml").write_text("train: images/train\nval: val.txt\nnames: [cat, dog]\n")
    assert list_splits(yolo_root, "yolo") == ["train", "val"]
    ds = load_dataset(yolo_root / "data.yaml", "val")
    assert len(ds) == 1 and ds.annotations(0)["boxes"].tolist() == [[0, 0, 10, 10]]


def test_yolo_without_yaml_uses_classes_txt(yolo_root: Path) -> None:
    (yolo_root / "data.yaml").unlink()
    (yolo_root / "val.txt").unlink()
    (yolo_root / "classes.txt").write_text("cat\ndog\n")
    assert detect_format(yolo_root) == "yolo"
    assert list_splits(yolo_root, "yolo") == ["train", "val"]
    assert load_dataset(yolo_root, "train").classes == ["cat", "dog"]


def test_yolo_path_key_is_relative_to_the_yaml(yolo_root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "configs"
    elsewhere.mkdir()
    (elsewhere / "mydata.yaml").write_text(
        f"path: ../{yolo_root.name}\ntrain: images/train\nnames: [cat, dog]\n"
    )
    assert len(load_dataset(elsewhere / "mydata.yaml", "train")) == 2


def test_yolo_polygon_gives_instance_mask(yolo_root: Path) -> None:
    (yolo_root / "labels" / "train" / "x.txt").write_text("1 0.1 0.1 0.3 0.1 0.3 0.4\n")
    (yolo_root / "labels" / "train" / "y.txt").write_text("")
    ds = load_dataset(yolo_root, "train", task="instance")
    masks = ds.annotations(0)["masks"]
    assert masks.shape == (1, 40, 50) and masks[0, 6, 13] and not masks[0, 30, 40]


# ----------------------------------------------------------------------------- folder


def test_folder_classes_sorted_over_all_splits(folder_root: Path) -> None:
    ds = load_dataset(folder_root, "train", task="classification")
    assert ds.format == "folder" and ds.classes == ["bird", "cat", "dog"]
    assert len(ds) == 3  # notes.txt ignored, nested image found
    image, target = ds[0]
    assert image.shape == (3, 8, 8)
    assert target["labels"].dtype == torch.int64 and target["labels"].ndim == 0
    labels = sorted(int(ds.annotations(i)["labels"]) for i in range(len(ds)))
    assert labels == [1, 1, 2]
    val = load_dataset(folder_root, "val", task="classification")
    assert sorted(int(val.annotations(i)["labels"]) for i in range(len(val))) == [0, 1]


def test_folder_without_splits_is_all(folder_root: Path) -> None:
    flat = folder_root / "train"
    assert list_splits(flat, "folder") == ["all"]
    assert len(load_dataset(flat, "all", task="classification")) == 3
    assert len(load_dataset(flat, task="classification")) == 3  # "train" means all of it
    with pytest.raises(DataError, match="only split is 'all'"):
        load_dataset(flat, "val", task="classification")


def test_folder_under_a_hidden_parent_is_read(folder_root: Path, tmp_path: Path) -> None:
    # the built-in crops live under ~/.cache: only hidden parts *inside* the dataset count
    import shutil

    hidden = shutil.copytree(folder_root, tmp_path / ".cache" / "crops")
    (hidden / "train" / "cat" / ".thumbs").mkdir()
    shutil.copy(
        next((hidden / "train" / "cat").glob("*.png")), hidden / "train" / "cat" / ".thumbs"
    )
    assert len(load_dataset(hidden, "train", task="classification")) == 3


def test_folder_refuses_detection(folder_root: Path) -> None:
    with pytest.raises(DataError, match="image-folder"):
        load_dataset(folder_root, "train", task="detection")


# ----------------------------------------------------------------------------- load_dataset


def test_detect_format_of_each_layout(coco_root, voc_root, yolo_root, folder_root) -> None:
    assert detect_format(coco_root) == "coco"
    assert detect_format(coco_root / "annotations" / "instances_train.json") == "coco"
    assert detect_format(voc_root) == "voc"
    assert detect_format(yolo_root) == "yolo"
    assert detect_format(yolo_root / "data.yaml") == "yolo"
    assert detect_format(folder_root) == "folder"


def test_unknown_layout_missing_path_split_and_task(tmp_path: Path, coco_root: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="no split 'test'; found: train, val"):
        load_dataset(coco_root, "test")
    with pytest.raises(Exception, match="unknown task"):
        load_dataset(coco_root, task="depth")


def test_match_split_aliases() -> None:
    assert match_split("train", ["train2017", "val2017"]) == "train2017"
    assert match_split("val", ["train", "valid"]) == "valid"
    assert match_split("test", ["train", "val"]) is None


def test_scenes_string_and_crops_view(scenes_root: Path, monkeypatch) -> None:
    import visionlab.data.scenes as scenes

    monkeypatch.setattr(scenes, "default_scenes_root", lambda **_: scenes_root)
    ds = load_dataset("scenes", "val")
    assert ds.root == scenes_root and ds.format == "coco" and len(ds) == 4
    assert ds.classes == list(scenes.SCENE_CLASSES) and len(ds.predicates) > 0
    _check_detection_contract(ds, 0)
    inst = load_dataset("scenes", "train", task="instance")
    for i in range(len(inst)):
        target = inst.annotations(i)
        assert target["masks"].shape[0] == target["boxes"].shape[0]
        n = target["boxes"].shape[0]
        assert target["relations"].shape == (n * (n - 1), 3)
    crops = load_dataset("scenes", "train", task="classification")
    assert crops.format == "folder" and crops.root == scenes_root / "crops"
    assert set(crops.classes) <= set(scenes.SCENE_CLASSES)


def test_transforms_are_applied(coco_root: Path) -> None:
    def flip(image, target):
        return image.flip(-1), {**target, "flipped": True}

    ds = load_dataset(coco_root, "train", transforms=flip)
    image, target = ds[0]
    assert target["flipped"] and image[:, 0, -1].tolist() == [1.0, 1.0, 1.0]


def test_annotations_does_not_decode_images(coco_root: Path, monkeypatch) -> None:
    ds = load_dataset(coco_root, "train", task="instance")
    monkeypatch.setattr(datasets, "load_image", lambda *a, **k: pytest.fail("decoded"))
    assert ds.annotations(0)["masks"].shape[0] == 2


def test_reading_leaves_files_untouched(coco_root, voc_root, yolo_root, digest) -> None:
    before = [digest(r) for r in (coco_root, voc_root, yolo_root)]
    for root in (coco_root, voc_root, yolo_root):
        ds = load_dataset(root, "train")
        for i in range(len(ds)):
            ds[i]
    assert [digest(r) for r in (coco_root, voc_root, yolo_root)] == before
    assert json.loads((coco_root / "annotations" / "instances_train.json").read_text())


def test_ram_cache_returns_what_decoding_returns(coco_root: Path) -> None:
    plain = load_dataset(coco_root, "train", task="detection")
    cached = load_dataset(coco_root, "train", task="detection")
    cached.cache_images()
    first = cached[0][0]
    first.mul_(0)  # a caller (or an in-place transform) changing its copy ...
    again, fresh = cached[0][0], plain[0][0]
    assert torch.equal(again, fresh)  # ... never changes what the cache hands out next
    assert 0 in cached._cache
