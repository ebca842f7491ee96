"""Transfer learning: torchvision / timm / visionlab weights from local files only."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from visionlab.errors import CheckpointError
from visionlab.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from visionlab.models.pretrained import BACKBONE_PREFIX, hub_weights_file, load_pretrained
from visionlab.models.registry import build_model


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision-format ResNet-18 state dict (random weights) and its network."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18-test.pth"
    torch.save(net.state_dict(), path)
    return path, net


def _imagenet_normalise(x):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (x - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_torchvision_state_dict_loads_exactly(resnet18_file):
    path, net = resnet18_file
    model = build_model("resnet18", pretrained=str(path)).eval()
    assert torch.equal(model.backbone.conv1.weight, net.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, net.layer4[1].bn2.running_var)
    assert torch.equal(model.fc.weight, net.fc.weight)  # 1000 classes: the head fits
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # same function as torchvision's network on normalised input
        torch.testing.assert_close(model(x), net(_imagenet_normalise(x)))


def test_head_dropped_when_classes_differ(resnet18_file, caplog):
    path, net = resnet18_file
    model = build_model("resnet18", num_classes=4)
    fresh_head = model.fc.weight.clone()
    with caplog.at_level("INFO", logger="visionlab.models.pretrained"):
        report = load_pretrained(model, path)
    assert report.head_reset
    assert any(d.startswith("fc.weight: [1000, 512]") for d in report.dropped)
    assert torch.equal(model.fc.weight, fresh_head) and model.fc.weight.shape == (4, 512)
    assert torch.equal(model.backbone.layer1[0].conv1.weight, net.layer1[0].conv1.weight)
    assert "dropped fc.weight" in caplog.text and "new classifier head" in caplog.text


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(CheckpointError, match=str(missing)):
        build_model("resnet18", pretrained=str(missing))


def test_hub_weights_missing_says_what_to_put_where(tmp_path, monkeypatch, resnet18_file):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    expected = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    assert hub_weights_file("resnet18") == expected
    with pytest.raises(CheckpointError, match=r"resnet18-f37072fd\.pth.*never downloads"):
        build_model("resnet18", pretrained=True)
    expected.parent.mkdir()
    expected.write_bytes(resnet18_file[0].read_bytes())
    model = build_model("resnet18", pretrained="hub", num_classes=2)
    assert torch.equal(model.backbone.conv1.weight, resnet18_file[1].conv1.weight)
    with pytest.raises(CheckpointError, match="no published"):
        build_model("tiny_cnn", pretrained=True)


def test_nothing_matching_is_an_error(tmp_path, resnet18_file):
    other = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), other)
    with pytest.raises(CheckpointError, match="nothing in it fits resnet18"):
        build_model("resnet18", pretrained=str(other))
    # resnet50 keys overlap resnet18's but their shapes do not: refuse, do not half-load
    bigger = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), bigger)
    with pytest.raises(CheckpointError, match="does not fit resnet18"):
        build_model("resnet18", pretrained=str(bigger))
    junk = tmp_path / "junk.pth"
    torch.save({"epoch": 3}, junk)
    with pytest.raises(CheckpointError, match="no tensors"):
        build_model("resnet18", pretrained=str(junk))
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only"):
        build_model("resnet18", pretrained=str(text))


def test_wrapped_timm_style_state_dict(tmp_path, resnet18_file):
    """{"state_dict": ...}, DDP's module. prefix and timm's head.fc name."""
    _, net = resnet18_file
    state = {
        f"module.{k}".replace("module.fc.", "module.head.fc."): v
        for k, v in net.state_dict().items()
    }
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": state, "epoch": 90}, path)
    model = build_model("resnet18", pretrained=str(path))
    assert torch.equal(model.fc.bias, net.fc.bias)


def test_visionlab_checkpoint_and_safetensors(tmp_path):
    source = build_model("tiny_cnn", num_classes=7)
    ckpt = tmp_path / "best.pt"
    classes = [f"shape{i}" for i in range(7)]
    torch.save(
        {"model": source.state_dict(), "model_name": "tiny_cnn", "classes": classes, "step": 10},
        ckpt,
    )
    model = build_model("tiny_cnn", num_classes=8, pretrained=str(ckpt))
    assert torch.equal(model.backbone.stem[0].weight, source.backbone.stem[0].weight)
    assert model.fc.weight.shape == (8, 192)

    # same class count, other classes: the head is not carried over
    same_count = build_model("tiny_cnn", num_classes=7)
    report = load_pretrained(same_count, ckpt, classes=[f"colour{i}" for i in range(7)])
    assert report.head_reset and not torch.equal(same_count.fc.weight, source.fc.weight)
    report = load_pretrained(same_count, ckpt, classes=classes)
    assert not report.head_reset and torch.equal(same_count.fc.weight, source.fc.weight)

    with pytest.raises(CheckpointError, match="checkpoint of model 'tiny_cnn', not 'resnet18'"):
        build_model("resnet18", pretrained=str(ckpt))

    st = tmp_path / "export" / "model.safetensors"
    st.parent.mkdir()
    save_file(source.state_dict(), str(st))
    for where in (st, st.parent):  # the file, or an exported folder holding it
        model = build_model("tiny_cnn", num_classes=7, pretrained=str(where))
        assert torch.equal(model.fc.weight, source.fc.weight)
    # `visionlab export` writes a model.json sidecar naming the model and its classes
    (st.parent / "model.json").write_text(
        json.dumps({"model_name": "tiny_cnn", "classes": classes})
    )
    report = load_pretrained(build_model("tiny_cnn", num_classes=7), st.parent, classes=["x"] * 7)
    assert report.head_reset
    with pytest.raises(CheckpointError, match="not 'resnet18'"):
        build_model("resnet18", pretrained=str(st.parent))


def test_backbone_only_loading(resnet18_file):
    path, net = resnet18_file
    backbone = build_backbone("resnet18", pretrained=str(path))
    assert torch.equal(backbone.layer3[0].downsample[0].weight, net.layer3[0].downsample[0].weight)
    classifier_ckpt = build_model("resnet18", num_classes=3)
    state = classifier_ckpt.state_dict()
    report = load_pretrained(build_backbone("resnet18"), state, prefix=BACKBONE_PREFIX)
    assert report.loaded and all(not k.startswith(("fc.", "backbone.")) for k in report.loaded)
    # without the prefix a bare backbone matches none of a classifier's keys: a loud error
    with pytest.raises(CheckpointError, match="nothing in it fits resnet18"):
        load_pretrained(build_backbone("resnet18"), state)
