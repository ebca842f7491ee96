"""`visionlab bench peers`: torchvision's peer mirrors our settings, both train through the
engine's Trainer and are timed at the checkpoints asked for; the suite runs end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from visionlab.bench import peers as bench
from visionlab.models.registry import build_model


class _Boxes:
    """Four 64 x 64 images with one box each: a detection dataset for ``build_loader``."""

    task = "detection"
    classes = ("a", "b")

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        box = torch.tensor([[8.0, 8.0, 40.0, 36.0]]) + 4 * i
        return torch.rand(3, 64, 64, generator=g), {"boxes": box, "labels": torch.tensor([1])}


def _ours():
    torch.manual_seed(0)
    return build_model(
        "faster_rcnn", num_classes=3, backbone_width=1, box_head={"fc_width": 8, "pool_size": 2}
    )


def _cfg():
    from visionlab.config import Config

    cfg = Config()
    cfg.optim.lr, cfg.schedule.warmup_steps = 1e-3, 1
    return cfg


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir")
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_checkpoints_are_a_list_of_steps():
    assert _parse().checkpoints == [100, 400, 1000]
    assert _parse("--checkpoints", "400, 100").checkpoints == [400, 100]
    with pytest.raises(SystemExit):
        _parse("--checkpoints", "100,x")


def test_torchvision_peer_takes_our_settings(one_thread):
    ours = _ours()
    peer = bench.torchvision_peer(ours, 64)
    rpn, box = ours.proposer.settings, ours.roi_heads["box"]
    assert peer.rpn.nms_thresh == rpn.nms_thresh
    assert peer.rpn._post_nms_top_n["testing"] == rpn.post_nms_top_n_test
    assert peer.rpn.anchor_generator.sizes == ours.proposer.anchor_generator.sizes
    assert peer.roi_heads.score_thresh == box.detection_settings.score_thresh
    assert peer.roi_heads.nms_thresh == box.detection_settings.nms_thresh
    assert peer.roi_heads.box_predictor.cls_score.out_features == box.num_classes
    for a, b in zip(peer.backbone.body.parameters(), ours.backbone.parameters()):
        assert a is not b and torch.equal(a, b)  # a copy of the same initialisation


@pytest.mark.parametrize("peer", [False, True], ids=["ours", "torchvision"])
def test_fit_trains_through_the_trainer_and_keeps_a_copy_at_each_point(peer, one_thread):
    model = _ours()
    if peer:
        model = bench.torchvision_peer(model, 64)
    start = [p.detach().clone() for p in model.parameters()]
    seconds, snapshots = bench.fit(model, _cfg(), _Boxes(), batch_size=2, points=[1, 3])
    assert seconds > 0 and set(snapshots) == {1, 3}
    assert all(not m.training and m is not model for m in snapshots.values())
    at = {k: list(m.parameters()) for k, m in snapshots.items()}
    changed = [not torch.equal(a, b) for a, b in zip(start, at[1])]
    assert any(changed)  # one step was taken before the first point
    assert any(not torch.equal(a, b) for a, b in zip(at[1], at[3]))  # and more after it
    for a, b in zip(at[3], model.parameters()):
        assert torch.equal(a, b)  # the last copy is the trained model


def test_infer_ms_times_each_model_on_each_image():
    calls = []

    class Model:
        def __init__(self, name):
            self.name = name

        def eval(self):
            return self

        def __call__(self, images):
            calls.append((self.name, images[0]))

    ms = bench.infer_ms({"a": Model("a"), "b": Model("b")}, ["x", "y"], repeats=2)
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    warm = [("a", "x"), ("b", "x")]
    turns = [("a", "x")] * 2 + [("b", "x")] * 2 + [("a", "y")] * 2 + [("b", "y")] * 2
    assert calls == warm + turns


@pytest.mark.slow
def test_quick_run_writes_one_row_per_point(tmp_path: Path):
    args = _parse("--quick", "--threads", "1", "--out-dir", str(tmp_path),
                  "model_args.pretrained_backbone=null", "image_size=64",
                  "train.batch_size=2")  # fmt: skip
    assert bench.run(args) == 0
    text = (tmp_path / "peers.md").read_text()
    assert "| 5 |" in text and "| 10 |" in text  # inference timed after 5 and 10 steps
    assert "| Fast R-CNN |" in text and "| Faster R-CNN |" in text
