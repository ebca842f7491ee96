"""R-CNN: warping with context (appendix A), the detection contract, buffers in checkpoints,
the backbone arguments' old names."""

from __future__ import annotations

import io

import pytest
import torch

from visionlab.errors import VisionLabError
from visionlab.models.backbones import IMAGENET_MEAN
from visionlab.models.rcnn import rcnn, warp_regions
from visionlab.models.registry import build_model, list_models


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("VISIONLAB_HOME", str(tmp_path / "home"))  # selective-search cache
    torch.set_num_threads(1)


def _two_colour_image() -> torch.Tensor:
    """64x64 blue image with a red square at x, y in [16, 48)."""
    image = torch.zeros(3, 64, 64)
    image[2] = 1.0
    image[:, 16:48, 16:48] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    return image


def test_warp_without_context_is_the_box() -> None:
    crops = warp_regions(
        _two_colour_image(), torch.tensor([[16.0, 16, 48, 48]]), size=24, context=0
    )
    assert crops.shape == (1, 3, 24, 24)
    assert torch.allclose(crops[0, 0], torch.ones(24, 24), atol=1e-5)  # all red


def test_warp_context_shows_surroundings_at_the_warped_scale() -> None:
    # a 32 px box warped to 32 px with 8 px of context: the box fills the central 16 px,
    # the 8 px border on each side is the blue image around it
    crops = warp_regions(
        _two_colour_image(), torch.tensor([[16.0, 16, 48, 48]]), size=32, context=8
    )
    red, blue = crops[0, 0], crops[0, 2]
    assert torch.allclose(red[9:23, 9:23], torch.ones(14, 14), atol=1e-5)
    assert torch.allclose(blue[:, :7], torch.ones(32, 7), atol=1e-5)
    assert torch.allclose(blue[:7, :], torch.ones(7, 32), atol=1e-5)


def test_warp_pads_with_the_mean_outside_the_image() -> None:
    image = torch.zeros(3, 64, 64)
    crops = warp_regions(image, torch.tensor([[0.0, 0, 32, 32]]), size=32, context=8)
    mean = torch.tensor(IMAGENET_MEAN)
    assert torch.allclose(crops[0, :, 2, 2], mean, atol=1e-5)  # left of / above the image
    assert torch.allclose(crops[0, :, 20, 20], torch.zeros(3), atol=1e-5)  # inside


def test_registered_and_detection_contract() -> None:
    assert {"rcnn", "sppnet"} <= set(list_models(task="detection"))
    torch.manual_seed(0)
    model = build_model(
        "rcnn",
        num_classes=3,
        backbone_width=4,
        input_size=32,
        context=2,
        fc_width=32,
        proposals={"search_size": 0, "max_proposals": 50},
    )
    image = _two_colour_image()
    target = {"boxes": torch.tensor([[16.0, 16, 48, 48]]), "labels": torch.tensor([2])}
    model.train()
    losses = model([image], [target])
    assert set(losses) == {"loss_classifier"} and losses["loss_classifier"].requires_grad
    model.eval()
    (out,) = model([image], extras=("proposals",))
    assert set(out) == {"boxes", "labels", "scores", "proposals"}
    assert out["boxes"].shape[1] == 4 and out["proposals"].shape[1] == 4
    # untrained, three classes: the softmax scores are near 1/3, above the 0.05 threshold
    assert len(out["labels"]) > 0
    assert out["labels"].dtype == torch.int64 and bool((out["labels"] >= 1).all())


def test_checkpoint_carries_svms_and_regressors() -> None:
    model = rcnn(num_classes=3, backbone_width=4, input_size=32, fc_width=16)
    model.svm_weight.normal_()
    model.svm_fitted.fill_(True)
    model.bbox_weight.normal_()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    again = rcnn(num_classes=3, backbone_width=4, input_size=32, fc_width=16)
    again.load_state_dict(state)
    assert torch.equal(again.svm_weight, model.svm_weight) and bool(again.svm_fitted)
    assert torch.equal(again.bbox_weight, model.bbox_weight)


def _seeded_rcnn(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("rcnn", num_classes=3, input_size=32, fc_width=16, **kwargs)


def test_old_backbone_argument_names_are_refused_and_old_checkpoints_upgraded() -> None:
    # recipes get a did-you-mean; checkpoints saved before the rename store `width`
    from visionlab.models.postprocess import upgrade_model_args

    with pytest.raises(VisionLabError, match="'width' \\(did you mean 'backbone_width'"):
        build_model("rcnn", width=4)
    with pytest.raises(VisionLabError, match="'pretrained' \\(did you mean 'pretrained_backbone'"):
        build_model("sppnet", pretrained="a.pt")
    new = _seeded_rcnn(backbone_width=4)
    old_args = {k: v for k, v in new.build_args.items() if k not in ("name", "backbone_width")}
    upgraded = upgrade_model_args("rcnn", {**old_args, "width": 4})
    assert upgraded == {k: v for k, v in new.build_args.items() if k != "name"}
    torch.manual_seed(0)
    old = build_model("rcnn", **upgraded)
    for key, value in new.state_dict().items():
        assert torch.equal(old.state_dict()[key], value), key
