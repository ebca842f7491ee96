"""What trains: stages past a model's deepest feature map (``Backbone.use_up_to``) and frozen
stages (``Backbone.freeze_to``) get no gradients, everything else does, and every key stays
in the state dict. DistributedDataParallel needs exactly that: each parameter that requires
a gradient gets one in every step."""

from __future__ import annotations

import pytest
import torch
from tiny_detectors import TINY

from visionlab.errors import VisionLabError
from visionlab.models.backbones import STRIDES, build_backbone
from visionlab.models.registry import build_model, list_models


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLAB_HOME", str(tmp_path / "home"))  # selective-search cache


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 64 px images, each a grey field with one coloured square and its box."""
    images, targets = [], []
    for i, (x, y) in enumerate(((8, 10), (30, 24))):
        image = torch.full((3, 64, 64), 0.5)
        image[:, y : y + 24, x : x + 24] = torch.tensor([1.0, 0.2, 0.1])[:, None, None]
        images.append(image)
        # the square, and a corner box it relates to (for the relation models)
        box = torch.tensor([[x, y, x + 24, y + 24], [56, 56, 64, 64]], dtype=torch.float32)
        masks = torch.zeros(2, 64, 64, dtype=torch.bool)  # for the instance models
        masks[0, y : y + 24, x : x + 24] = True
        masks[1, 56:, 56:] = True
        targets.append(
            {
                "boxes": box,
                "labels": torch.tensor([i + 1, 1]),
                "masks": masks,
                "relations": torch.tensor([[0, 1, 1]]),
            }
        )
    return images, targets


def _stage_parameter_names(backbone, strides) -> set[str]:
    ids = {id(p) for s in strides for m in backbone.stage_modules(s) for p in m.parameters()}
    return {n for n, p in backbone.named_parameters() if id(p) in ids}


def test_every_detector_has_tiny_settings():
    detectors = {n for t in ("detection", "instance", "relation") for n in list_models(task=t)}
    assert detectors <= {n.removesuffix("_fpn") for n in TINY}


@pytest.mark.parametrize("case", sorted(TINY))
def test_every_trainable_parameter_gets_a_gradient(case):
    """One training step: a gradient for every parameter that requires one (DDP's
    precondition), none required of the stages past the deepest map read, all keys kept."""
    name = case.removesuffix("_fpn")
    kwargs, used_stride = TINY[case]
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **kwargs).train()
    images, targets = _batch()
    sum(model(images, targets).values()).backward()

    backbone = model.backbone
    assert backbone.used_stride == used_stride
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    unused = {
        f"backbone.{n}"
        for n in _stage_parameter_names(backbone, [s for s in STRIDES if s > used_stride])
    }
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == unused
    assert all(p.grad is None for n, p in model.named_parameters() if n in unused)
    # the unused stages stay in the module: a rebuilt model loads the state dict strictly
    state = model.state_dict()
    assert unused <= set(state)
    build_model(**model.build_args).load_state_dict(state, strict=True)


def test_unfreezing_a_detector_leaves_its_unused_stages_off():
    """``transfer.unfreeze_after`` turns a frozen backbone back on with ``freeze_to(0)``."""
    model = build_model("yolo", num_classes=3, frozen_stride=4, **TINY["yolo"][0]).train()
    backbone = model.backbone
    stem = _stage_parameter_names(backbone, [4])
    assert not any(p.requires_grad for n, p in backbone.named_parameters() if n in stem)
    backbone.freeze_to(0)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == _stage_parameter_names(backbone, [4, 8])
    images, targets = _batch()
    sum(model(images, targets).values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet18"])
def test_use_up_to_and_freeze_to_combine(arch):
    backbone = build_backbone(arch)
    keys = set(backbone.state_dict())
    backbone.use_up_to(16)
    deep = _stage_parameter_names(backbone, [32])
    assert deep and set(backbone.state_dict()) == keys

    def trainable() -> set[str]:
        return {n for n, p in backbone.named_parameters() if p.requires_grad}

    assert trainable() == _stage_parameter_names(backbone, [4, 8, 16])
    backbone.freeze_to(8)
    assert trainable() == _stage_parameter_names(backbone, [16])
    backbone.freeze_to(0)  # unfreezing turns on what the model uses, not the unused stage
    assert trainable() == _stage_parameter_names(backbone, [4, 8, 16])
    backbone.train()
    stage32 = backbone.stage_modules(32)
    assert all(not m.training for s in stage32 for m in s.modules())  # statistics kept
    assert all(m.training for s in backbone.stage_modules(16) for m in s.modules())
    backbone.use_up_to(32)
    assert trainable() == _stage_parameter_names(backbone, STRIDES)
    with pytest.raises(VisionLabError, match="used_stride"):
        backbone.use_up_to(2)


def test_a_map_past_used_stride_still_passes_gradients_back():
    """Asking for an unused stage's map computes it; its own parameters get no gradient,
    the stages before it do."""
    torch.manual_seed(0)
    backbone = build_backbone("tiny_cnn", width=4).train()
    backbone.use_up_to(8)
    out = backbone.feature_maps(torch.rand(2, 3, 64, 64), strides=(32,))["stride32"]
    out.sum().backward()
    for s in STRIDES:
        grads = [p.grad is not None for m in backbone.stage_modules(s) for p in m.parameters()]
        assert all(grads) if s <= 8 else not any(grads)
