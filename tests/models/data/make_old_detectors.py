"""Writes ``old_detectors.pt``: the five detectors as checkpoints written before the one
post-processor (``visionlab.models.postprocess``) store them, for
``tests/models/test_postprocess.py::test_old_checkpoints_give_the_same_detections``.

Ran once against the code before that change (commit 8fed526 + the engine edits of that
day): ``model_args`` hold the old knob spellings (``score_threshold``, ``nms_threshold``,
``detections_per_image`` in ``test`` / ``box_head``). It does not run against the current
code (those spellings are refused now); it stays as the record of how the file was made.

Per model: ``model_name``, ``model_args`` (``build_args`` without the name, as
``visionlab train`` stores them), ``state_dict``, ``images``, ``proposals`` (selective
search is replaced by these fixed regions, so that the file does not depend on OpenCV's
version) and ``outputs`` (eval-mode detections). Weights are random but spread (the last
layers re-drawn with a larger std) so that scores are distinct; R-CNN and SPPNet get
fitted SVMs and box regressors (random buffers). Low thresholds, so every output holds
detections. YOLO's scores are checked to be nowhere near its threshold (the threshold
moved from ``>`` to ``>=``).

    .venv/bin/python tests/models/data/make_old_detectors.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from visionlab.models.registry import build_model

OUT = Path(__file__).with_name("old_detectors.pt")
YOLO_THRESH = 0.02

SPECS = {
    "rcnn": dict(
        num_classes=4,
        backbone_width=1,
        input_size=32,
        context=2,
        fc_width=16,
        test={"score_threshold": 0.02, "nms_threshold": 0.3, "detections_per_image": 12},
    ),
    "sppnet": dict(
        num_classes=4,
        backbone_width=1,
        scales=[64],
        levels=[2, 1],
        feature_stride=16,
        fc_width=16,
        test={"score_threshold": 0.02, "nms_threshold": 0.4, "detections_per_image": 12},
    ),
    "fast_rcnn": dict(
        num_classes=4,
        backbone_width=1,
        feature_stride=16,
        pooler="roi_align",  # RoI pooling of the tiny map gives equal features, tied scores
        box_head={
            "fc_width": 16,
            "pool_size": 3,
            "score_threshold": 0.02,
            "nms_threshold": 0.5,
            "detections_per_image": 12,
        },
    ),
    "faster_rcnn": dict(
        num_classes=4,
        backbone_width=1,
        feature_stride=16,
        rpn={"anchor_sizes": [16, 32], "aspect_ratios": [0.5, 1.0, 2.0]},
        box_head={
            "fc_width": 16,
            "pool_size": 3,
            "score_threshold": 0.02,
            "nms_threshold": 0.5,
            "detections_per_image": 12,
        },
    ),
    "yolo": dict(
        num_classes=4,
        backbone_width=1,
        input_size=64,
        head="conv",
        feature_stride=8,
        head_convs=1,
        head_channels=8,
        score_thresh=YOLO_THRESH,
        nms_thresh=0.5,
        detections_per_img=12,
    ),
}


def images(generator: torch.Generator) -> list[torch.Tensor]:
    """Two noisy images with a few flat rectangles, of different sizes (64x64, 48x80),
    as ``uint8`` (a quarter of the bytes; the models see ``image / 255``)."""
    out = []
    for h, w in ((64, 64), (48, 80)):
        im = torch.rand(3, h, w, generator=generator) * 0.2
        for _ in range(3):
            x1, y1 = (torch.rand(2, generator=generator) * torch.tensor([w - 16, h - 16])).long()
            x2 = x1 + 8 + int(torch.randint(0, 16, (), generator=generator))
            y2 = y1 + 8 + int(torch.randint(0, 16, (), generator=generator))
            im[:, y1:y2, x1:x2] = torch.rand(3, 1, 1, generator=generator)
        out.append((im.clamp(0, 1) * 255).round().to(torch.uint8))
    return out


def proposals(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """24 boxes inside (and a few across the border of) the image."""
    h, w = image.shape[-2:]
    xy = torch.rand(24, 2, generator=generator) * torch.tensor([w, h]) - 4
    wh = torch.rand(24, 2, generator=generator) * 24 + 6
    return torch.cat([xy, xy + wh], 1)


def spread(model: torch.nn.Module, name: str, generator: torch.Generator) -> None:
    """Re-draw the last layers so that scores differ clearly; fit R-CNN's SVMs / regressors."""
    with torch.no_grad():
        if name in ("rcnn", "sppnet"):
            model.cls_score.weight.normal_(0, 1.0, generator=generator)
            model.svm_weight.normal_(0, 1.0, generator=generator)
            model.svm_bias.normal_(-1.0, 0.5, generator=generator)
            model.svm_scale.fill_(2.0)
            model.svm_fitted.fill_(True)
            model.bbox_weight.normal_(0, 0.05, generator=generator)
            model.bbox_scale.fill_(0.1)
            model.bbox_fitted.fill_(True)
        elif name in ("fast_rcnn", "faster_rcnn"):
            model.roi_heads.head.cls_score.weight.normal_(0, 1.5, generator=generator)
            model.roi_heads.head.bbox_pred.weight.normal_(0, 0.05, generator=generator)
        else:
            # every output near 0.4: confidences, class probabilities and sqrt sizes in (0, 1)
            model.head.out.weight.normal_(0, 0.15, generator=generator)
            model.head.out.bias.fill_(0.4)


def yolo_candidate_scores(model: torch.nn.Module, ims: list[torch.Tensor]) -> torch.Tensor:
    """Every class-specific confidence of the YOLO grid (to check the threshold margin)."""
    with torch.no_grad():
        grid = model.grid(model._resize(ims, model.input_size))
    conf = grid["confidence"].clamp(0, 1)[..., None]
    n, S = conf.shape[:2]
    probs = grid["classes"].clamp(0, 1).reshape(n, S, S, 1, -1)
    return (probs * conf).flatten()


def stored_once(key: str, tensor: torch.Tensor, seen: dict) -> torch.Tensor:
    """``tensor``, or an equal one already stored under ``key`` by another model: the
    backbones are built from one seed, so torch.save writes their weights once."""
    for other in seen.setdefault(key, []):
        same_kind = other.shape == tensor.shape and other.dtype == tensor.dtype
        if same_kind and torch.equal(other, tensor):
            return other
    seen[key].append(tensor.clone())
    return seen[key][-1]


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1234)
    ims_uint8 = images(g)
    ims = [im.float() / 255 for im in ims_uint8]
    props = [proposals(im, g) for im in ims]
    record, seen = {}, {}
    for name, spec in SPECS.items():
        torch.manual_seed(0)
        model = build_model(name, **spec)
        spread(model, name, g)
        model.eval()
        if name in ("rcnn", "sppnet"):
            by_size = {tuple(im.shape): p for im, p in zip(ims, props)}
            model.propose = lambda image, by_size=by_size: by_size[tuple(image.shape)]
        elif name == "fast_rcnn":
            model.propose = lambda images: list(props)
        with torch.no_grad():
            outputs = model(ims)
        summary = [(len(o["scores"]), o["scores"].min().item(), o["scores"].max().item(),
                    o["labels"].tolist()) for o in outputs]  # fmt: skip
        print(name, summary)
        for out in outputs:
            assert len(out["boxes"]) >= 2, (name, out)
            assert len(set(out["scores"].tolist())) == len(out["scores"]), ("tied", name, out)
        if name == "yolo":
            scores = yolo_candidate_scores(model, ims)
            margin = (scores - YOLO_THRESH).abs().min().item()
            assert margin > 1e-4, margin  # `>` and `>=` keep the same candidates
        args = {k: v for k, v in model.build_args.items() if k != "name"}
        record[name] = {
            "model_name": name,
            "model_args": args,
            "state_dict": {k: stored_once(k, v, seen) for k, v in model.state_dict().items()},
            "images": ims_uint8,
            "proposals": props,
            "outputs": [{k: v.clone() for k, v in o.items()} for o in outputs],
        }
        print(name, [len(o["boxes"]) for o in outputs], args)
    torch.save(record, OUT)
    torch.load(OUT, weights_only=True)  # the test loads it so
    print(OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
