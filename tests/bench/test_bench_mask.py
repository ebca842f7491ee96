"""`visionlab bench mask`: torchvision's MaskRCNN peer mirrors our settings (anchors, mask
head, classes), and the suite runs end to end and writes its Markdown."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch import nn

from visionlab.bench import mask as bench
from visionlab.models.registry import build_model


def _ours(**mask_head):
    torch.manual_seed(0)
    return build_model(
        "mask_rcnn",
        num_classes=4,
        backbone_width=1,
        rpn={"anchor_sizes": [12, 24], "aspect_ratios": [1.0]},
        box_head={"fc_width": 8, "pool_size": 2},
        mask_head={"width": 6, "pool_size": 4, **mask_head},
    )


def test_torchvision_peer_takes_our_mask_settings(one_thread):
    ours = _ours()
    peer = bench.torchvision_peer(ours, 64, masks=True)
    settings = ours.roi_heads["mask"].settings
    assert peer.rpn.anchor_generator.sizes == ours.proposer.anchor_generator.sizes
    assert peer.roi_heads.box_predictor.cls_score.out_features == 4
    assert peer.roi_heads.mask_roi_pool.output_size == (settings.pool_size,) * 2
    convs = [m for m in peer.roi_heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [settings.width] * settings.num_convs == [6] * 4
    predictor = peer.roi_heads.mask_predictor
    assert predictor.conv5_mask.out_channels == settings.width
    assert predictor.mask_fcn_logits.out_channels == 4  # one mask per class (+ background)
    for a, b in zip(peer.backbone.body.parameters(), ours.backbone.parameters()):
        assert a is not b and torch.equal(a, b)  # a copy of the same initialisation


def test_build_applies_the_ablation_over_the_recipe():
    from visionlab.config import load_config

    cfg = load_config(bench.CONFIG, ["model_args.pretrained_backbone=null"])
    model = bench.build(cfg, 8, {"pooler": "roi_pool", "class_agnostic": True}, peer=False)
    settings = model.roi_heads["mask"].settings
    assert settings.pooler == "roi_pool" and settings.class_agnostic
    assert settings.width == cfg.model_args["mask_head"]["width"]  # the recipe's kept


@pytest.mark.slow
def test_quick_run_writes_the_markdown(tmp_path: Path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir")
    bench.add_arguments(parser)
    args = parser.parse_args(
        ["--quick", "--threads", "1", "--timing-images", "2", "--out-dir", str(tmp_path),
         "model_args.pretrained_backbone=null", "image_size=64", "train.batch_size=2"]
    )  # fmt: skip
    assert bench.run(args) == 0
    text = (tmp_path / "mask_rcnn.md").read_text()
    for row in ("| ours |", "| torchvision |", "| RoI pool |", "| class-agnostic |"):
        assert row in text
    assert "| target | >= -0.02 | >= -0.02 | <= 1.0 | <= 1.0 |" in text
    assert "mask AP50 >= 0.95 x box AP50" in text
