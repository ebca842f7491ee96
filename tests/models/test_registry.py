"""The model registry: build by name, did-you-mean errors, listing, build_args."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from visionlab.errors import VisionLabError
from visionlab.models import registry
from visionlab.models.registry import build_model, list_models, model_info, register_model

CLASSIFIERS = {"tiny_cnn", "alexnet", "vgg16", "resnet18", "resnet50", "mobilenet_v3_small"}


def test_list_models_pattern_and_task():
    assert set(list_models()) >= CLASSIFIERS
    assert list_models() == sorted(list_models())
    assert list_models("resnet*") == ["resnet18", "resnet50"]
    assert set(list_models(task="classification")) >= CLASSIFIERS
    assert list_models("no_such_*") == []
    assert list_models(task="no_such_task") == []


def test_model_info():
    info = model_info("resnet18")
    assert info.task == "classification"
    assert "ResNet" in info.summary
    assert info.args["num_classes"] == 1000 and info.args["pretrained"] is None


def test_unknown_model_suggests_close_name():
    with pytest.raises(VisionLabError, match=r"unknown model 'resnet19'.*did you mean 'resnet18'"):
        build_model("resnet19")
    with pytest.raises(VisionLabError, match="unknown model"):
        model_info("nothing_like_it")


def test_unknown_kwarg_is_a_clear_error():
    with pytest.raises(
        VisionLabError, match=r"no argument 'num_class'.*did you mean 'num_classes'"
    ):
        build_model("tiny_cnn", num_class=3)


def test_bad_kwarg_values_are_clear_errors():
    with pytest.raises(VisionLabError, match="num_classes"):
        build_model("tiny_cnn", num_classes=0)
    with pytest.raises(VisionLabError, match="dropout"):
        build_model("tiny_cnn", dropout=1.5)
    with pytest.raises(VisionLabError, match="freeze"):
        build_model("tiny_cnn", freeze="head")


def test_build_args_are_plain_data_without_weight_source(tmp_path):
    model = build_model("tiny_cnn", num_classes=3)
    path = tmp_path / "w.pt"
    torch.save({"model": model.state_dict(), "model_name": "tiny_cnn"}, path)
    other = build_model("tiny_cnn", num_classes=3, width=16, pretrained=str(path))
    assert model.task == "classification"
    assert model.build_args == {
        "name": "tiny_cnn",
        "num_classes": 3,
        "width": 16,
        "dropout": 0.0,
        "freeze": None,
    }
    assert other.build_args == model.build_args  # the file is not part of the architecture
    assert yaml.safe_load(yaml.safe_dump(model.build_args)) == model.build_args
    assert json.loads(json.dumps(model.build_args)) == model.build_args


def test_register_twice_is_an_error(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("test_dummy", task="classification", summary="a test model")
    def dummy(*, width: int = 2) -> nn.Module:
        return nn.Linear(width, width)

    assert model_info("test_dummy").args == {"width": 2}
    model = build_model("test_dummy", width=3)
    assert model.build_args == {"name": "test_dummy", "width": 3}
    with pytest.raises(ValueError, match="registered twice"):

        @register_model("test_dummy", task="classification", summary="again")
        def dummy2() -> nn.Module:
            return nn.Identity()


def test_renamed_args_must_map_old_names_to_arguments(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="renamed_args"):

        @register_model("test_renamed", task="classification", summary="x", renamed_args={"w": "x"})
        def renamed(*, width: int = 2) -> nn.Module:
            return nn.Linear(width, width)
