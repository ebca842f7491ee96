"""Every registered classifier: forward shapes, features, head reset, rebuild, freezing."""

from __future__ import annotations

import pytest
import torch

from visionlab.errors import VisionLabError
from visionlab.models.backbones import STRIDES, build_backbone, list_backbones
from visionlab.models.registry import build_model, list_models

SIZE = 64


@pytest.mark.parametrize("name", list_models(task="classification"))
def test_classifier_contract(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logits = model(x)
        maps = model.feature_maps(x)
        features = model.forward_features(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    backbone = model.backbone
    assert features.shape[:2] == (2, backbone.out_channels)
    assert list(maps) == [f"stride{s}" for s in STRIDES]
    for stride in STRIDES:
        fmap = maps[f"stride{stride}"]
        assert fmap.shape[1] == backbone.feature_channels[f"stride{stride}"]
        # nominal stride; AlexNet's unpadded 11x11/4 stem loses a pixel or two
        assert SIZE // stride - 2 <= fmap.shape[-1] <= SIZE // stride
    assert torch.equal(maps[f"stride{backbone.out_stride}"], features)

    # the same architecture rebuilds from build_args, and gives the same outputs
    rebuilt = build_model(**model.build_args).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), logits)

    model.reset_classifier(3)
    assert model.build_args["num_classes"] == 3
    with torch.no_grad():
        assert model.forward_head(features).shape == (2, 3)
    head = {id(p) for p in model.head_parameters()}
    body = {id(p) for p in model.backbone_parameters()}
    assert head and body and not head & body
    assert head | body == {id(p) for p in model.parameters()}


def test_feature_maps_subset_stops_early():
    backbone = build_backbone("tiny_cnn").eval()
    calls = []
    backbone.stages[3].register_forward_hook(lambda *a: calls.append(1))
    maps = backbone.feature_maps(torch.rand(1, 3, 64, 64), strides=(8, 16))
    assert list(maps) == ["stride8", "stride16"] and not calls  # stride 32 never ran
    with pytest.raises(ValueError, match="stride"):
        backbone.feature_maps(torch.rand(1, 3, 64, 64), strides=(2,))
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, H, W\]"):
        backbone.feature_maps(torch.rand(3, 64, 64))


def test_backbones_list_and_unknown():
    assert set(list_backbones()) == set(list_models(task="classification"))
    with pytest.raises(Exception, match="did you mean 'resnet50'"):
        build_backbone("resnet5")


def test_normalisation_is_inside_the_model():
    """Callers pass [0, 1] images: the mean ImageNet colour maps to zero input."""
    backbone = build_backbone("tiny_cnn")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert backbone.normalize(mean).abs().max() < 1e-6
    assert "normalize.mean" not in backbone.state_dict()


def test_freeze_backbone_trains_head_only():
    model = build_model("resnet18", num_classes=4, freeze="backbone")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    model.train()
    assert model.training and model.fc.training
    assert not model.backbone.bn1.training  # frozen BN keeps its running statistics
    before = model.backbone.bn1.running_mean.clone()
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    assert torch.equal(model.backbone.bn1.running_mean, before)
    assert model.backbone.conv1.weight.grad is None and model.fc.weight.grad is not None

    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.parameters())
    assert model.backbone.bn1.training
    model.freeze_backbone()
    model.reset_classifier(2)  # a new head is trainable even while frozen
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}


def test_freeze_backbone_of_alexnet_freezes_fc6_fc7_too():
    """AlexNet / VGG keep torchvision's fc6 and fc7 (``pre_logits``): frozen with the
    backbone, while their dropout still drops in training."""
    model = build_model("alexnet", num_classes=3, freeze="backbone").train()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    assert not any(p.requires_grad for p in model.pre_logits.parameters())
    dropouts = [m for m in model.pre_logits.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.training for m in dropouts)
    assert not any(m.training for m in model.backbone.features)  # the frozen stages
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet18", "alexnet"])
def test_freeze_to_stops_gradients_and_statistics_up_to_that_stride(arch):
    torch.manual_seed(0)
    net = build_backbone(arch, frozen_stride=4)
    frozen = {id(p) for m in net.stage_modules(4) for p in m.parameters()}
    assert frozen and all(not p.requires_grad for m in net.stage_modules(4) for p in m.parameters())
    assert all(p.requires_grad for p in net.parameters() if id(p) not in frozen)
    net.train()
    frozen_stats = [b for m in net.frozen_modules() for n, b in m.named_buffers() if "running" in n]
    before = [b.clone() for b in frozen_stats]
    maps = net.feature_maps(torch.rand(2, 3, 64, 64), strides=(4, 8))
    assert not maps["stride4"].requires_grad and maps["stride8"].requires_grad
    maps["stride8"].sum().backward()
    for p in net.parameters():  # the frozen layers got no gradient, the stride-8 stage did
        if id(p) in frozen:
            assert p.grad is None
    assert any(p.grad is not None for m in net.stage_modules(8) for p in m.parameters())
    # frozen batch norms stay in eval mode and keep their statistics
    assert all(not m.training for f in net.frozen_modules() for m in f.modules())
    assert all(torch.equal(a, b) for a, b in zip(frozen_stats, before))
    assert (arch == "alexnet") == (not frozen_stats)  # AlexNet has no batch norm
    with pytest.raises(VisionLabError, match="frozen_stride"):
        build_backbone(arch, frozen_stride=5)
