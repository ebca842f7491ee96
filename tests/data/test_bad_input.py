"""Bad input gets a DataError naming the file (and the annotation id or field), never a
traceback, never a wrong sample; every image mode becomes RGB; user files are not touched."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionlab.data.datasets import load_dataset
from visionlab.data.imageio import image_size, load_image
from visionlab.errors import DataError


def _edit_coco(root: Path, edit) -> Path:
    path = root / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def _ann(data: dict, ann_id: int) -> dict:
    return next(a for a in data["annotations"] if a["id"] == ann_id)


# ----------------------------------------------------------------------------- image modes


def test_grayscale_becomes_rgb(tmp_path: Path, make_image) -> None:
    image = load_image(make_image(tmp_path / "g.png", 6, 5, mode="L"))
    assert image.shape == (3, 5, 6) and image.dtype == torch.float32
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[0, 0, 3] = 0  # transparent -> white
    rgba[0, 1, 3] = 255  # opaque -> red
    rgba[1, :, 3] = 128  # half -> pink
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.shape == (3, 2, 2)
    assert image[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert image[:, 0, 1].tolist() == [1.0, 0.0, 0.0]
    assert abs(image[1, 1, 0].item() - 127 / 255) < 0.01


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (3, 3), 1)
    img.putpalette([0, 0, 0, 0, 0, 255])
    img.info["transparency"] = 1
    img.save(tmp_path / "p.png", transparency=1)
    assert load_image(tmp_path / "p.png")[:, 1, 1].tolist() == [1.0, 1.0, 1.0]


def test_16bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    array = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode == "I;16"
    image = load_image(tmp_path / "d.png")
    assert image.shape == (3, 1, 4)
    expected = torch.tensor([0.0, 1000 / 65535, 32768 / 65535, 1.0])
    assert torch.allclose(image[0, 0], expected, atol=1e-6)


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(tmp_path / "c.jpg", quality=100)
    image = load_image(tmp_path / "c.jpg")
    assert image.shape == (3, 8, 8)
    r, g, b = image[:, 4, 4].tolist()
    assert r > 0.9 and g < 0.1 and b > 0.9  # no magenta ink means ... magenta light


def test_exif_orientation_is_honoured(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "stored.png", 20, 10)  # white corner stored top-left
    img = Image.open(path)
    exif = img.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "rotated.jpg")
    assert image.shape == (3, 20, 10)  # width and height swap
    assert image[:, 1, -2].min() > 0.9  # the white corner is now top-right
    assert image[:, 1, 1].max() < 0.9
    assert image_size(tmp_path / "rotated.jpg") == (20, 10)


# ----------------------------------------------------------------------------- image files


def test_corrupt_image(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"bad\.png.*not an image"):
        load_image(tmp_path / "bad.png")


def test_truncated_image(tmp_path: Path, make_image) -> None:
    data = make_image(tmp_path / "full.jpg", 64, 64).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg.*(corrupt|truncated)"):
        load_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("limit", [150, 300])  # error (> 2x limit) and warning (> limit)
def test_decompression_bomb_is_refused(tmp_path: Path, make_image, monkeypatch, limit) -> None:
    path = make_image(tmp_path / "big.png", 20, 20)  # 400 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError, match=r"big\.png.*decompression bomb"):
        load_image(path)


def test_missing_image_names_file_and_image_id(coco_root: Path) -> None:
    (coco_root / "images" / "train" / "b.png").unlink()
    with pytest.raises(DataError, match=r"b\.png \[image id=11\]: image file not found"):
        load_dataset(coco_root, "train")


def test_image_size_disagreeing_with_annotations(coco_root: Path) -> None:
    _edit_coco(coco_root, lambda d: d["images"][2].update(width=33))
    ds = load_dataset(coco_root, "train")
    with pytest.raises(DataError, match=r"c\.png \[image_id=12 .*32x32.*32x33"):
        ds[2]


# ----------------------------------------------------------------------------- annotation files


def test_malformed_json(coco_root: Path) -> None:
    path = coco_root / "annotations" / "instances_train.json"
    path.write_text('{"images": [1, 2,, ]}')
    with pytest.raises(DataError, match=r"instances_train\.json: malformed JSON at line 1"):
        load_dataset(coco_root, "train")


def test_malformed_xml(voc_root: Path) -> None:
    (voc_root / "Annotations" / "img1.xml").write_text("<annotation><object></annotation>")
    with pytest.raises(DataError, match=r"img1\.xml: malformed XML"):
        load_dataset(voc_root, "train")


def test_malformed_yaml(yolo_root: Path) -> None:
    (yolo_root / "data.yaml").write_text("names: [cat, dog\ntrain: images/train\n")
    with pytest.raises(DataError, match=r"data\.yaml: malformed YAML at line"):
        load_dataset(yolo_root, "train")


def test_box_outside_image_is_clipped_with_a_warning(coco_root: Path, caplog) -> None:
    _edit_coco(coco_root, lambda d: _ann(d, 2).update(bbox=[30, 20, 20, 20]))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(coco_root, "train")
    assert ds.annotations(0)["boxes"][1].tolist() == [30, 20, 40, 30]
    assert "annotation id=2" in caplog.text and "clipped" in caplog.text


def test_rounding_overshoot_is_clipped_quietly(coco_root: Path, caplog) -> None:
    _edit_coco(coco_root, lambda d: _ann(d, 2).update(bbox=[15, 5, 25.5, 10]))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(coco_root, "train")
    assert ds.annotations(0)["boxes"][1].tolist() == [15, 5, 40, 15]
    assert "clipped" not in caplog.text


def test_box_entirely_outside_is_an_error(coco_root: Path) -> None:
    _edit_coco(coco_root, lambda d: _ann(d, 2).update(bbox=[50, 5, 10, 10]))
    with pytest.raises(DataError, match=r"\[annotation id=2\]: box .* entirely outside"):
        load_dataset(coco_root, "train")


def test_negative_width_is_an_error(coco_root: Path) -> None:
    _edit_coco(coco_root, lambda d: _ann(d, 1).update(bbox=[2, 3, -10, 8]))
    with pytest.raises(DataError, match=r"\[annotation id=1\]: bbox has negative width"):
        load_dataset(coco_root, "train")


def test_voc_x2_before_x1_is_an_error(voc_root: Path) -> None:
    xml = voc_root / "Annotations" / "img1.xml"
    xml.write_text(xml.read_text().replace("<xmax>20</xmax>", "<xmax>3</xmax>"))
    with pytest.raises(DataError, match=r"img1\.xml \[object 1 \(person\)\]: box has negative"):
        load_dataset(voc_root, "train")


def test_zero_size_box_is_skipped_with_a_warning(coco_root: Path, caplog) -> None:
    _edit_coco(coco_root, lambda d: _ann(d, 2).update(bbox=[15, 5, 0, 10]))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(coco_root, "train")
    assert ds.annotations(0)["labels"].tolist() == [1]
    assert ds.annotations(0)["relations"].shape == (0, 3)  # they needed object 2
    assert (
        "zero-size" in caplog.text
        and "relationships dropped with skipped object(s) [2]" in caplog.text
    )


def test_nan_coordinates(coco_root: Path, yolo_root: Path) -> None:
    _edit_coco(coco_root, lambda d: _ann(d, 1).update(bbox=[float("nan"), 3, 10, 8]))
    with pytest.raises(DataError, match=r"\[annotation id=1\]: box has NaN"):
        load_dataset(coco_root, "train")
    (yolo_root / "labels" / "train" / "x.txt").write_text("0 nan 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"x\.txt \[line 1\]: NaN"):
        load_dataset(yolo_root, "train")


def test_unknown_category(coco_root: Path, yolo_root: Path, voc_root: Path) -> None:
    _edit_coco(coco_root, lambda d: _ann(d, 2).update(category_id=99))
    with pytest.raises(DataError, match=r"\[annotation id=2\]: unknown category id 99"):
        load_dataset(coco_root, "train")
    (yolo_root / "labels" / "train" / "x.txt").write_text("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"x\.txt \[line 2\]: unknown class id 2"):
        load_dataset(yolo_root, "train")
    (voc_root / "labelmap.txt").write_text("background:::\nperson:::\n")
    with pytest.raises(DataError, match=r"img1\.xml \[object 2 \(dog\)\]: unknown category"):
        load_dataset(voc_root, "train")


def test_duplicate_image_ids(coco_root: Path) -> None:
    _edit_coco(coco_root, lambda d: d["images"][1].update(id=10))
    with pytest.raises(DataError, match=r"\[images\[1\]\]: duplicate image id 10"):
        load_dataset(coco_root, "train")


def test_duplicate_annotation_ids(coco_root: Path) -> None:
    _edit_coco(coco_root, lambda d: _ann(d, 5).update(id=1))
    with pytest.raises(DataError, match=r"\[annotation id=1\]: duplicate annotation id"):
        load_dataset(coco_root, "train")


def test_bad_segmentations(coco_root: Path) -> None:
    _edit_coco(coco_root, lambda d: _ann(d, 1).update(segmentation=[[1, 2, 3]]))
    with pytest.raises(DataError, match=r"\[annotation id=1 segmentation\]: a polygon"):
        load_dataset(coco_root, "train")
    _edit_coco(coco_root, lambda d: _ann(d, 1).update(segmentation=[]))
    _edit_coco(coco_root, lambda d: _ann(d, 2)["segmentation"].update(size=[10, 10]))
    with pytest.raises(DataError, match=r"\[annotation id=2 segmentation\]: RLE size"):
        load_dataset(coco_root, "train")


def test_instance_task_needs_masks(coco_root: Path) -> None:
    _edit_coco(coco_root, lambda d: _ann(d, 1).update(segmentation=[]))
    assert len(load_dataset(coco_root, "train")) == 3  # detection does not need them
    with pytest.raises(DataError, match=r"\[annotation id=1\]: task 'instance' needs a mask"):
        load_dataset(coco_root, "train", task="instance")


def test_relationship_to_unknown_object(coco_root: Path) -> None:
    _edit_coco(coco_root, lambda d: d["relationships"][0].update(object_id=42))
    with pytest.raises(DataError, match=r"\[relationships\[0\]\]: .*unknown object 42"):
        load_dataset(coco_root, "train")


def test_yolo_wrong_field_count_and_names(yolo_root: Path) -> None:
    (yolo_root / "labels" / "train" / "x.txt").write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(DataError, match=r"x\.txt \[line 1\]: expected 'class cx cy w h'"):
        load_dataset(yolo_root, "train")
    (yolo_root / "data.yaml").write_text("train: images/train\nnames: {0: cat, 2: dog}\n")
    with pytest.raises(DataError, match=r"data\.yaml \[names\]: names ids must be 0..1"):
        load_dataset(yolo_root, "train")


def test_voc_missing_image(voc_root: Path) -> None:
    (voc_root / "JPEGImages" / "img1.jpg").unlink()
    with pytest.raises(DataError, match=r"img1\.jpg: image file not found .*img1\.xml"):
        load_dataset(voc_root, "train")


# ------------------------------------------------------------------ names leading outside


def test_coco_file_names_must_stay_in_the_images_folder(coco_root: Path, make_image) -> None:
    outside = make_image(coco_root.parent / "outside.png", 40, 30)  # exists: would be read
    json_path = coco_root / "annotations" / "instances_train.json"
    for file_name, reason in (
        (str(outside), "is absolute"),
        ("../../../outside.png", "leads out of the folder with '..'"),
    ):
        _edit_coco(coco_root, lambda d, name=file_name: d["images"][1].update(file_name=name))
        with pytest.raises(DataError) as err:
            load_dataset(coco_root, "train")
        assert str(err.value) == (
            f"{json_path} [images[1] (id 11)]: file_name {file_name!r} {reason}; "
            "file names are relative to the images folder"
        )
    (coco_root / "images" / "train" / "sub").mkdir()
    _edit_coco(coco_root, lambda d: d["images"][1].update(file_name="sub/../b.png"))
    assert len(load_dataset(coco_root, "train")) == 3  # '..' that stays inside is fine


def test_voc_filename_and_split_ids_must_stay_in_the_dataset(voc_root: Path, make_image) -> None:
    outside = make_image(voc_root.parent / "outside.jpg", 48, 32)
    xml_path = voc_root / "Annotations" / "img1.xml"
    xml = xml_path.read_text()
    for filename, reason in (
        (str(outside), "is absolute"),
        ("../../outside.jpg", "leads out of the folder with '..'"),
    ):
        xml_path.write_text(xml.replace("<filename>img1.jpg<", f"<filename>{filename}<"))
        with pytest.raises(DataError) as err:
            load_dataset(voc_root, "train")
        assert str(err.value) == (
            f"{xml_path} [filename]: {filename!r} {reason}; file names are relative to JPEGImages/"
        )
    xml_path.write_text(xml)
    (voc_root.parent / "outside.xml").write_text(xml)
    split_list = voc_root / "ImageSets" / "Main" / "train.txt"
    split_list.write_text("img1\n../../outside\n")
    with pytest.raises(DataError) as err:
        load_dataset(voc_root, "train")
    assert str(err.value) == (
        f"{split_list}: image id '../../outside' leads out of the folder with '..'; "
        "ids name files in Annotations/ and JPEGImages/"
    )


def test_failed_loads_leave_files_untouched(coco_root: Path, digest) -> None:
    _edit_coco(coco_root, lambda d: _ann(d, 2).update(category_id=99))
    (coco_root / "images" / "train" / "c.png").write_bytes(b"broken")
    before = digest(coco_root)
    with pytest.raises(DataError):
        load_dataset(coco_root, "train")
    assert digest(coco_root) == before
