"""The model registry: build by name, did-you-mean errors, listing, build_args."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

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


def test_a_renamed_argument_is_refused_naming_the_new_one_and_upgraded_in_checkpoints():
    from visionlab.models.postprocess import upgrade_model_args

    with pytest.raises(VisionLabError, match=r"'width' \(did you mean 'backbone_width'"):
        build_model("yolo", num_classes=3, width=8)
    assert upgrade_model_args("yolo", {"width": 8})["backbone_width"] == 8  # an old checkpoint


def test_renamed_args_must_map_old_names_to_arguments(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="renamed_args"):

        @register_model("test_renamed", task="classification", summary="x", renamed_args={"w": "x"})
        def renamed(*, width: int = 2) -> nn.Module:
            return nn.Linear(width, width)


# ------------------------------------------------------------------------------ discovery

MODELS_DIR = Path(registry.__file__).parent


def _decorated_modules() -> set[str]:
    """Modules of the models package whose source applies ``@register_model`` (parsed, not
    imported)."""
    found = set()
    for path in MODELS_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            for deco in node.decorator_list:
                func = deco.func if isinstance(deco, ast.Call) else deco
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name == "register_model":
                    parts = path.relative_to(MODELS_DIR.parent.parent).with_suffix("").parts
                    found.add(".".join(p for p in parts if p != "__init__"))
    return found


def test_discovery_imports_every_module_that_registers_models():
    list_models()
    decorated = _decorated_modules()
    assert "visionlab.models.classifier" in decorated and "visionlab.models.yolo" in decorated
    assert decorated <= set(registry._imported)
    # every module of the package, each once, in sorted order
    assert registry._imported == registry._package_modules(registry.MODELS_PACKAGE)
    assert registry._imported == sorted(set(registry._imported))
    # and what registered models is exactly what the sources decorate
    registering = {
        e.info.module for e in registry._REGISTRY.values() if e.info.module.startswith("visionlab.")
    }
    assert registering == decorated


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package ``vl_fake_models`` on sys.path: two modules and a sub-package, no list."""
    root = tmp_path / "vl_fake_models"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "b_other.py").write_text("VALUE = 1\n")
    (root / "sub" / "deep.py").write_text(
        "from torch import nn\n"
        "from visionlab.models.registry import register_model\n\n"
        '@register_model("test_discovered", task="classification", summary="found")\n'
        "def discovered(*, width: int = 2) -> nn.Module:\n"
        "    return nn.Linear(width, width)\n"
    )
    (root / "a_first.py").write_text("VALUE = 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield root
    for name in [n for n in sys.modules if n.split(".")[0] == "vl_fake_models"]:
        del sys.modules[name]


def test_discovery_finds_a_new_module_without_a_list(fake_package):
    assert registry._package_modules("vl_fake_models") == [
        "vl_fake_models.a_first",
        "vl_fake_models.b_other",
        "vl_fake_models.sub",
        "vl_fake_models.sub.deep",
    ]
    imported: list[str] = []
    registry._import_package("vl_fake_models", imported)
    assert imported == registry._package_modules("vl_fake_models")
    assert model_info("test_discovered").module == "vl_fake_models.sub.deep"
    registry._import_package("vl_fake_models", imported)  # once: nothing re-imported
    assert len(imported) == 4


def test_discovery_surfaces_import_errors(fake_package):
    (fake_package / "c_broken.py").write_text("import no_such_module_anywhere\n")
    imported: list[str] = []
    with pytest.raises(ModuleNotFoundError, match="no_such_module_anywhere"):
        registry._import_package("vl_fake_models", imported)
    assert "vl_fake_models.c_broken" not in imported
