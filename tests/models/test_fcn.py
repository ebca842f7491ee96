"""FCN-32s/16s/8s: any input size, bilinear deconvolution, padding helpers, transfer, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visionlab.errors import CheckpointError, VisionLabError
from visionlab.models.backbones import SequentialBackbone
from visionlab.models.batching import batch_images, pad_to_multiple
from visionlab.models.fcn import (
    DEFAULT_HEADS,
    FCN,
    Bilinear,
    Deconv,
    FCNEncoder,
    FCNHeadConfig,
    bilinear_kernel,
    build_fcn,
    linear_to_conv,
)
from visionlab.models.registry import build_model, list_models

VARIANTS = ("fcn32s", "fcn16s", "fcn8s")


pytestmark = pytest.mark.usefixtures("one_thread")


def small_fcn(variant: str = "fcn8s", **kwargs) -> FCN:
    torch.manual_seed(0)
    kwargs.setdefault("num_classes", 3)
    kwargs.setdefault("fc_width", 32)
    return build_fcn(variant, **kwargs)


def randomize_skips(model: FCN) -> FCN:
    """Zero-initialised score layers hide wiring bugs; give them random weights."""
    for name in ("score_pool4", "score_pool3"):
        if hasattr(model, name):
            torch.nn.init.normal_(getattr(model, name).weight, std=0.1)
    torch.nn.init.normal_(model.head.score_fr.weight, std=0.1)
    return model


def test_registered_with_task_and_build_args():
    for name in VARIANTS:
        assert name in list_models(task="segmentation")
        model = build_model(name, num_classes=4, fc_width=16, upsample="bilinear")
        assert isinstance(model, FCN)
        assert model.task == "segmentation"
        assert model.build_args["name"] == name
        assert model.build_args["num_classes"] == 4
        assert model.build_args["upsample"] == "bilinear"
        rebuilt = build_model(**model.build_args)
        assert rebuilt.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("upsample", ["deconv", "bilinear"])
def test_output_has_the_input_size(variant, upsample):
    model = randomize_skips(small_fcn(variant, upsample=upsample)).eval()
    with torch.no_grad():
        for height, width in [(37, 53), (64, 64), (100, 75), (1, 1)]:
            out = model(torch.rand(2, 3, height, width))
            assert out.shape == (2, 3, height, width)
            assert torch.isfinite(out).all()


def test_resnet_backbone_any_size():
    model = randomize_skips(small_fcn("fcn8s", backbone="resnet18", fc_width=8)).eval()
    assert model.score_pool3.in_channels == 128  # layer2
    with torch.no_grad():
        assert model(torch.rand(1, 3, 45, 70)).shape == (1, 3, 45, 70)


def test_vgg16_taps_pool3_pool4_pool5():
    # build_fcn("...", backbone="vgg16") also allocates torchvision's 120M-parameter
    # classifier (seconds); the convolutional part alone checks the same taps.
    from torchvision.models.vgg import cfgs, make_layers

    backbone = SequentialBackbone(
        make_layers(cfgs["D"]), [(4, 15), (8, 22), (16, 29), (32, 30)],
        {4: 256, 8: 512, 16: 512, 32: 512},
    )  # fmt: skip
    backbone.arch = "vgg16"
    encoder = FCNEncoder(backbone)
    assert encoder.channels == {8: 256, 16: 512, 32: 512}
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        pool3, pool4, pool5 = encoder(x)
        assert pool3.shape == (1, 256, 8, 12)
        assert pool4.shape == (1, 512, 4, 6)
        torch.testing.assert_close(pool5, backbone.forward_features(x))
        torch.testing.assert_close(pool3, backbone.features[:17](backbone.normalize(x)))
    head = DEFAULT_HEADS["vgg16"]
    model = FCN(encoder=encoder, num_classes=3, head=FCNHeadConfig(7, 8, head.dropout)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 45, 70)).shape == (1, 3, 45, 70)


def test_output_pixels_do_not_depend_on_padding_content():
    # The crop keeps exactly the input's pixels: a change in the image changes the output
    # there, and a 64x64 input (no padding) gives the same logits as before padding.
    model = randomize_skips(small_fcn("fcn8s")).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(model(pad_to_multiple(x, 32)), ref)
        assert model(x[..., :50, :60]).shape[-2:] == (50, 60)


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_deconv_initialised_to_bilinear_matches_interpolate_half_pixel(factor):
    torch.manual_seed(factor)
    x = torch.randn(2, 3, 5, 4)
    up = Deconv(3, factor)
    with torch.no_grad():
        out = up(x)
    assert out.shape == (2, 3, 5 * factor, 4 * factor)
    half = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    corners = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)
    b = factor // 2  # border rows/columns where the deconvolution sees zero padding
    interior = (..., slice(b, -b), slice(b, -b))
    torch.testing.assert_close(out[interior], half[interior], atol=1e-5, rtol=1e-5)
    assert (out[interior] - corners[interior]).abs().max() > 1e-2  # not the corner convention
    assert (out - half).abs().max() > 1e-2  # and the border does differ (zeros outside)
    torch.testing.assert_close(Bilinear(factor)(x), half)


def test_bilinear_kernel_is_diagonal_and_learnable():
    weight = bilinear_kernel(4, 2)
    assert weight.shape == (4, 4, 4, 4)
    off_diagonal = weight.clone()
    off_diagonal[range(4), range(4)] = 0
    assert off_diagonal.abs().sum() == 0
    torch.testing.assert_close(weight[0, 0, 1], torch.tensor([0.1875, 0.5625, 0.5625, 0.1875]))
    assert Deconv(4, 2).weight.requires_grad
    with pytest.raises(ValueError, match="even factor"):
        Deconv(4, 3)


def test_skips_start_at_zero_so_fcn8s_starts_from_the_coarse_scores():
    # Sec. 4.2/4.3: zero-initialised skip score layers. With the shared weights copied from
    # an FCN-32s, an untrained FCN-8s outputs FCN-32s's stride-32 scores, only upsampled in
    # three steps (2x, 2x, 8x) instead of one.
    fcn32 = small_fcn("fcn32s", upsample="bilinear").eval()
    torch.nn.init.normal_(fcn32.head.score_fr.weight, std=0.1)
    fcn8 = small_fcn("fcn8s", upsample="bilinear").eval()
    result = fcn8.load_state_dict(fcn32.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(
        f"score_pool{p}.{w}" for p in (3, 4) for w in ("weight", "bias")
    )
    x = torch.rand(1, 3, 50, 90)
    with torch.no_grad():
        coarse = fcn32.head(
            fcn32.encoder(pad_to_multiple(x, 32, fill=fcn32.encoder.pad_fill))[2]
        )  # [1, 3, 2, 3]
        expected = Bilinear(8)(Bilinear(2)(Bilinear(2)(coarse)))[..., :50, :90]
        torch.testing.assert_close(fcn8(x), expected, atol=1e-5, rtol=1e-4)
        torch.nn.init.normal_(fcn8.score_pool3.weight, std=0.1)
        assert (fcn8(x) - expected).abs().max() > 1e-3


def test_skip_scales_multiply_pool_features():
    model = randomize_skips(small_fcn("fcn16s", upsample="bilinear")).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        base = model(x)
        model.skip_scales = (0.0, 0.0)
        without = model(x)
        model.score_pool4.weight.zero_()
        model.score_pool4.bias.zero_()
        torch.testing.assert_close(model(x), without)
    assert (base - without).abs().max() > 1e-3


def test_batch_images_with_fill_and_mixed_size_batches():
    images = [torch.rand(3, 37, 53), torch.rand(3, 100, 75), torch.rand(3, 64, 64)]
    batch, sizes = batch_images(images, 32, fill=(0.1, 0.2, 0.3))
    assert batch.shape == (3, 3, 128, 96)
    assert sizes == [(37, 53), (100, 75), (64, 64)]
    assert torch.equal(batch[0, :, :37, :53], images[0])
    assert torch.equal(
        batch[0, :, 37:, :], torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1).expand(3, 91, 96)
    )

    model = randomize_skips(small_fcn("fcn8s")).eval()
    outs = model.forward_images(images)
    assert [tuple(o.shape) for o in outs] == [(3, 37, 53), (3, 100, 75), (3, 64, 64)]
    with torch.no_grad():
        # the largest image pads to the same 128x96 alone or in the batch: identical logits
        torch.testing.assert_close(outs[1], model(images[1][None])[0], atol=1e-5, rtol=1e-5)
        # a smaller image sees more padding in the batch than alone (its receptive field
        # reaches past its border), so its scores move a little, but hardly its labels
        alone = model(images[0][None])[0]
    assert (outs[0] - alone).abs().mean() < 0.05 * alone.abs().mean()
    assert (outs[0].argmax(0) == alone.argmax(0)).float().mean() > 0.95
    with pytest.raises(ValueError, match="at least one"):
        batch_images([])


def test_bad_arguments_are_clear_errors():
    with pytest.raises(VisionLabError, match="upsample"):
        build_model("fcn8s", num_classes=3, upsample="nearest")
    with pytest.raises(VisionLabError, match="backbone"):
        build_model("fcn8s", num_classes=3, backbone="resnet101")
    with pytest.raises(VisionLabError, match="num_classes"):
        build_model("fcn32s", num_classes=1)
    with pytest.raises(VisionLabError, match="skip_scales"):
        build_model("fcn16s", num_classes=3, skip_scales=0.01)
    with pytest.raises(CheckpointError, match="not found"):
        build_model("fcn8s", num_classes=3, pretrained_backbone="/nonexistent/weights.pt")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        small_fcn()(torch.rand(3, 32, 32))


def test_fully_connected_layer_becomes_an_equivalent_convolution():
    # Sec. 3.1: fc6 of VGG16 reads a flattened 7x7x512 pool5; as a 7x7 convolution it gives
    # the same numbers at the one position where the map is 7x7, and slides beyond.
    torch.manual_seed(0)
    fc = torch.nn.Linear(5 * 3 * 3, 4)
    conv = torch.nn.Conv2d(5, 4, 3)
    with torch.no_grad():
        conv.weight.copy_(linear_to_conv(fc.weight, 5, 3))
        conv.bias.copy_(fc.bias)
        x = torch.randn(2, 5, 3, 3)
        torch.testing.assert_close(conv(x)[:, :, 0, 0], fc(x.flatten(1)))
        assert conv(torch.randn(2, 5, 6, 8)).shape == (2, 4, 4, 6)


def test_pretrained_backbone_is_transferred(tmp_path):
    # A classifier checkpoint (visionlab layout: backbone.* / fc.*) initialises the encoder.
    source = small_fcn("fcn32s")
    state = {f"backbone.{k}": v for k, v in source.encoder.backbone.state_dict().items()}
    state["fc.weight"] = torch.zeros(7, 192)
    for v in state.values():
        if v.is_floating_point():
            v.add_(0.5)
    path = tmp_path / "classifier.pt"
    torch.save({"model": state, "model_name": "tiny_cnn", "classes": ["a"] * 7}, path)
    model = build_model("fcn8s", num_classes=3, pretrained_backbone=str(path))
    loaded = model.encoder.backbone.state_dict()
    for key, value in state.items():
        if key.startswith("backbone."):
            torch.testing.assert_close(loaded[key.removeprefix("backbone.")], value)
    assert model.head.score_fr.weight.abs().sum() == 0  # the head stays fresh


def test_staged_training_loads_a_coarser_fcn(tmp_path):
    # Sec. 4.2: FCN-16s starts from a trained FCN-32s; its new skip layer starts at zero.
    coarse = randomize_skips(small_fcn("fcn32s"))
    path = tmp_path / "fcn32s.pt"
    torch.save({"model": coarse.state_dict(), "model_name": "fcn32s"}, path)
    fine = build_model("fcn16s", num_classes=3, fc_width=32, pretrained=str(path))
    theirs = coarse.state_dict()
    for key, value in fine.state_dict().items():
        if key.startswith(("encoder.", "head.")):
            torch.testing.assert_close(value, theirs[key])
    assert fine.score_pool4.weight.abs().sum() == 0
    assert "pretrained" not in fine.build_args  # a weight source, not the architecture
    # an FCN whose encoder does not fit (another backbone) is an error, not a partial load
    other = {k: v[:1] if k.startswith("encoder.") and v.dim() else v for k, v in theirs.items()}
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="encoder"):
        build_model("fcn16s", num_classes=3, pretrained=str(tmp_path / "other.pt"))


def test_freeze_backbone_keeps_encoder_fixed():
    model = small_fcn("fcn8s")
    model.freeze_backbone()
    model.train()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.head_parameters())
    bn = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not bn.training
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.parameters()) and bn.training


def shapes_dataset(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-made scenes: discs (class 1) and squares (class 2) on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, labels = [], []
    for _ in range(n):
        image = 0.3 * torch.rand(3, 1, 1, generator=g) + 0.1 * torch.rand(
            3, size, size, generator=g
        )
        label = torch.zeros(size, size, dtype=torch.long)
        for k in range(3):
            cls = 1 + k % 2
            cy, cx = torch.randint(10, size - 10, (2,), generator=g).tolist()
            r = int(torch.randint(6, 12, (1,), generator=g))
            if cls == 1:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                mask = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
            image[:, mask] = (0.5 + 0.5 * torch.rand(3, generator=g))[:, None]
            label[mask] = cls
        images.append(image.clamp(0, 1))
        labels.append(label)
    return torch.stack(images), torch.stack(labels)


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    ious = []
    for c in range(num_classes):
        union = ((pred == c) | (target == c)).sum()
        if union:
            ious.append(((pred == c) & (target == c)).sum() / union)
    return float(torch.stack(ious).mean())


@pytest.mark.slow
def test_fcn8s_overfits_a_few_images():
    torch.manual_seed(0)
    images, labels = shapes_dataset(4)
    model = build_model("fcn8s", num_classes=3, fc_width=64)
    model.eval()
    with torch.no_grad():
        before = mean_iou(model(images).argmax(1), labels, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = mean_iou(model(images).argmax(1), labels, 3)
    assert before < 0.5
    assert after > 0.9, f"mIoU {after:.3f} after overfitting 4 images"


def test_pretrained_backbone_path_is_not_part_of_the_architecture(tmp_path):
    # A checkpoint rebuilds its model from build_args; the weight file it started from may
    # not exist where the checkpoint is loaded, so it must not be recorded.
    source = small_fcn("fcn32s")
    state = {f"backbone.{k}": v for k, v in source.encoder.backbone.state_dict().items()}
    path = tmp_path / "classifier.pt"
    torch.save({"model": state, "model_name": "tiny_cnn", "classes": ["a"]}, path)
    model = build_model("fcn8s", num_classes=3, pretrained_backbone=str(path))
    assert "pretrained_backbone" not in model.build_args
    build_model(**model.build_args)  # rebuilds without the file


def test_frozen_stride_survives_unfreezing_the_backbone():
    model = build_model("fcn8s", num_classes=3, frozen_stride=4)
    backbone = model.encoder.backbone
    early = [p for m in backbone.stage_modules(4) for p in m.parameters()]
    assert early and not any(p.requires_grad for p in early)
    model.freeze_backbone()  # transfer.freeze: backbone, then transfer.unfreeze_after
    model.unfreeze_backbone()
    assert not any(p.requires_grad for p in early)  # frozen_stride's layers stay frozen
    assert all(p.requires_grad for m in backbone.stage_modules(8) for p in m.parameters())
    with pytest.raises(VisionLabError, match="frozen_stride"):
        build_model("fcn8s", num_classes=3, frozen_stride=3)
