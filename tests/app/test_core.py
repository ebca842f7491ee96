"""The web app without the page: which models it offers, what it refuses, and that every
task predicts and draws as `visionlab predict` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from app_standins import MODELS

from visionlab.app.core import ModelCache, find_models, predict_image, read_upload, scenes_samples
from visionlab.data.imageio import load_image
from visionlab.errors import DataError


def test_find_models_lists_each_run_best_checkpoint(app_models: Path) -> None:
    labels = [c.label for c in find_models([app_models])]
    assert labels == sorted(f"{task}/checkpoints/best.pt" for task in MODELS)


def test_find_models_takes_files_and_refuses_a_missing_folder(
    app_models: Path, tmp_path: Path
) -> None:
    ckpt = app_models / "segmentation" / "checkpoints" / "best.pt"
    assert [c.path for c in find_models([ckpt])] == [ckpt]
    with pytest.raises(DataError, match="nowhere"):
        find_models([tmp_path / "nowhere"])


def test_a_text_file_renamed_png_is_refused_by_its_upload_name(uploads: dict) -> None:
    with pytest.raises(DataError, match=r"^notes\.png: not an image file"):
        read_upload(uploads["text"])


def test_a_decompression_bomb_is_refused_before_decoding(uploads: dict) -> None:
    with pytest.raises(DataError, match="decompression bomb"):
        read_upload(uploads["bomb"], name="holiday.png")


def test_an_image_over_the_pixel_limit_is_refused(uploads: dict) -> None:
    with pytest.raises(DataError, match=r"96 x 72 pixels is over this app's limit of 5000"):
        read_upload(uploads["photo"], max_pixels=5000)
    assert read_upload(uploads["photo"], max_pixels=96 * 72).shape == (3, 72, 96)


def test_an_upload_is_decoded_as_visionlab_reads_images(uploads: dict) -> None:
    assert torch.equal(read_upload(uploads["photo"]), load_image(uploads["photo"]))
    assert uploads["photo"].is_file()  # the caller deletes it, not the reader


def test_scenes_samples_are_the_datasets_val_images() -> None:
    from visionlab.data.scenes_draw import render_scene

    samples = scenes_samples(2)
    first = next(iter(samples.values()))
    expected = torch.from_numpy(render_scene(128, 0, "val", 0).image).permute(2, 0, 1) / 255
    assert len(samples) == 2 and torch.equal(first, expected.float())


@pytest.mark.parametrize("task", list(MODELS))
def test_every_task_predicts_and_draws_as_predict_does(
    task: str, app_models: Path, uploads: dict
) -> None:
    from visionlab.engine.api import predict

    choices = find_models([app_models])
    cache = ModelCache(choices, torch.device("cpu"))
    label = f"{task}/checkpoints/best.pt"
    model = cache.get(label)
    assert cache.get(label) is model  # loaded once
    image = read_upload(uploads["photo"])
    result = predict_image(model, image, name="photo.png", score_threshold=0.0, topk=3)
    record = json.loads(json.dumps(result.record))  # plain JSON
    assert record["file"] == "photo.png" and (record["height"], record["width"]) == (72, 96)
    reference = predict(model, [image], score_threshold=0.0, topk=3)[0]
    if task == "classification":
        assert [t["label"] for t in record["top"]] == reference["labels"].tolist()
    elif task == "segmentation":
        assert "semantic_png" not in record  # no file written
        assert set(record["classes_present"]) <= set(model.classes)
    else:
        assert len(record["detections"]) == len(reference["boxes"]) > 0
        assert ("segmentation" in record["detections"][0]) == (task == "instance")
        assert ("relations" in record) == (task == "relation")
    assert max(result.drawing.size) >= 96 and result.predict_ms > 0


def test_the_cache_keeps_the_most_recent_models(app_models: Path) -> None:
    cache = ModelCache(find_models([app_models]), torch.device("cpu"), size=2)
    a, b, c = (f"{t}/checkpoints/best.pt" for t in ("classification", "segmentation", "detection"))
    first = cache.get(a)
    cache.get(b)
    cache.get(c)  # a is dropped
    assert cache.get(a) is not first
    with pytest.raises(Exception, match="no model 'x'"):
        cache.get("x")


def test_an_exported_model_is_offered_and_predicts_as_its_checkpoint(
    app_models: Path, uploads: dict, tmp_path: Path
) -> None:
    from visionlab.engine.commands_export import export

    ckpt = app_models / "classification" / "checkpoints" / "best.pt"
    export(ckpt, tmp_path / "cls-onnx", "onnx")
    (choice,) = find_models([tmp_path])
    assert choice.label == "cls-onnx/model.onnx"
    cache = ModelCache([choice], torch.device("cpu"))
    image = read_upload(uploads["photo"])
    exported = predict_image(cache.get(choice.label), image, name="photo.png", topk=3)
    eager = predict_image(
        ModelCache(find_models([ckpt]), torch.device("cpu")).get("best.pt"),
        image,
        name="photo.png",
        topk=3,
    )
    assert [t["label"] for t in exported.record["top"]] == [t["label"] for t in eager.record["top"]]
