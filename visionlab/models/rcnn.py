"""R-CNN (Girshick, Donahue, Darrell, Malik, "Rich feature hierarchies for accurate object
detection and semantic segmentation", CVPR 2014), and the region-detector frame it shares
with SPPNet (:mod:`visionlab.models.sppnet`).

- sec. 2.1: selective-search proposals (:func:`visionlab.ops.selective_search`, cached),
  each warped with context to the CNN input (appendix A, :func:`warp_regions`).
- sec. 2.3: (N + 1)-way fine-tuning on sampled regions, then one linear SVM per class on
  fc7 with hard negative mining (:mod:`visionlab.models.svm`).
- appendix C: class-specific ridge regression from pool5 features to box deltas.
- sec. 2.2: score every region, then the one post-processor (class-wise NMS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.errors import VisionLabError
from visionlab.models.backbones import IMAGENET_MEAN, Backbone, build_backbone
from visionlab.models.detector import Detector
from visionlab.models.heads import sample_proposals, settings_from
from visionlab.models.postprocess import (
    DETECTION_KNOBS,
    DetectionSettings,
    postprocess_detections,
    reject_nested_knobs,
)
from visionlab.models.region_stages import STAGE_WORK, RegionTrainingSet, load_proposals
from visionlab.models.registry import register_model
from visionlab.models.svm import SVMSettings
from visionlab.ops import (
    BalancedSampler,
    BoxCoder,
    Matcher,
    roi_align,
    selective_search,
)

__all__ = [
    "RENAMED_BACKBONE_ARGS",
    "BoxRegSettings",
    "FinetuneSettings",
    "ProposalSettings",
    "RegionDetector",
    "RegionFeatures",
    "TestSettings",
    "WarpedRegions",
    "warp_regions",
]

# R-CNN's box parameterisation (appendix C) without Fast R-CNN's target scaling.
BOX_CODER_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
# The backbone arguments' old names (before they matched fast_rcnn / faster_rcnn): old
# checkpoints store them in `model_args`, so the registry still maps them.
RENAMED_BACKBONE_ARGS = {"width": "backbone_width", "pretrained": "pretrained_backbone"}


@dataclass
class ProposalSettings:
    """Selective search (R-CNN sec. 2.1).

    Attributes:
        mode: ``"fast"`` (the paper's) or ``"quality"``.
        max_proposals: keep at most this many boxes per image (2000).
        search_size: run the search on the image resized so its longer side is this many
            pixels (0: as it is); boxes are mapped back to the image.
        min_size: drop boxes narrower or lower than this (pixels of the image).
        cache: keep results on disk (``$VISIONLAB_HOME/ss_cache``).
    """

    mode: str = "fast"
    max_proposals: int = 2000
    search_size: int = 256
    min_size: float = 2.0
    cache: bool = True


@dataclass
class FinetuneSettings:
    """Region sampling of the (N + 1)-way fine-tuning (R-CNN sec. 2.3).

    Attributes:
        fg_iou: regions with IoU >= this against a gt box are foreground, others background.
        regions_per_image: regions sampled per image (the paper: 128 per batch).
        fg_fraction: fraction of foreground regions (32 / 128).
        train_conv: train the convolutional layers too (R-CNN does; SPPNet does not).
        hflip: mirror an image (with its boxes and proposals) with probability 0.5.
        images: training images the stages use, a seeded random subset (0 = all).
        eval_images: validation images scored after the last stage (0 = all, -1 = none).
    """

    fg_iou: float = 0.5
    regions_per_image: int = 32
    fg_fraction: float = 0.25
    train_conv: bool = True
    hflip: bool = True
    images: int = 0
    eval_images: int = 100


@dataclass
class BoxRegSettings:
    """Bounding-box ridge regression (R-CNN appendix C).

    Attributes:
        min_iou: train on proposals whose IoU with a gt box of the class exceeds this (0.6).
        ridge: regularisation lambda on pool features scaled to mean L2 norm ``feat_norm``.
        feat_norm: the mean L2 norm the features are scaled to before the regression.
    """

    min_iou: float = 0.6
    ridge: float = 1000.0
    feat_norm: float = 20.0


@dataclass
class TestSettings:
    """Test-time detection (R-CNN sec. 2.2); the thresholds are the model's
    :class:`~visionlab.models.postprocess.DetectionSettings`.

    Attributes:
        box_regression: apply the fitted box regressors.
        chunk: regions per forward pass of the CNN (memory bound of R-CNN's warped crops).
    """

    box_regression: bool = True
    chunk: int = 512


def warp_regions(image: Tensor, boxes: Tensor, *, size: int, context: int) -> Tensor:
    """Warp each box of ``image`` to ``size x size`` with ``context`` pixels of surrounding
    image (R-CNN appendix A): the box is dilated so that it fills the central
    ``size - 2 * context`` pixels; outside the image the crop shows the ImageNet mean.

    Args:
        image: ``Tensor[3, H, W]`` float in [0, 1].
        boxes: ``Tensor[K, 4]`` xyxy pixels.
        size: output side (the CNN input, 227 for AlexNet).
        context: pixels of context at the warped scale (16 in the paper; 0 = tight warp).

    Returns:
        ``Tensor[K, 3, size, size]``.
    """
    if not 0 <= 2 * context < size:
        raise VisionLabError(f"warp: context {context} must be >= 0 and < size / 2 ({size})")
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    boxes = boxes.to(image.dtype)
    scale = size / (size - 2 * context)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0) * (scale / 2)
    dilated = torch.cat([centre - half, centre + half], dim=1)
    # sample the mean-subtracted image so that samples outside it (zeros) become the mean
    crops = roi_align(
        (image - mean)[None], [dilated], size, spatial_scale=1.0, sampling_ratio=1, aligned=True
    )
    return crops + mean


class RegionFeatures(Protocol):
    """How a :class:`RegionDetector` computes each region's pooled ("pool5") feature:
    :class:`WarpedRegions` (R-CNN) or :class:`~visionlab.models.sppnet.PyramidRegions`
    (SPPNet). Plain settings, no weights."""

    def setup(self, backbone: Backbone) -> int:
        """Prepare ``backbone`` (e.g. :meth:`~Backbone.use_up_to`); return the feature
        length of one region, ``pool_dim``."""
        ...

    def __call__(
        self,
        backbone: Backbone,
        images: Sequence[Tensor],
        boxes: Sequence[Tensor],
        *,
        chunk: int,
    ) -> Tensor:
        """``Tensor[sum K_i, pool_dim]`` of ``boxes[i]`` (xyxy) of ``images[i]``;
        ``chunk`` bounds the regions per backbone pass where that matters."""
        ...


class WarpedRegions:
    """R-CNN's region features: each region warped (with context) to ``input_size`` and
    run through the whole CNN; pool5 is the flattened last feature map (appendix A).

    Args:
        input_size: side of the warped regions (227 for AlexNet; 64 suits ``tiny_cnn``).
        context: pixels of context around each region at the warped scale (16 at 227).
    """

    def __init__(self, *, input_size: int, context: int) -> None:
        self.input_size = int(input_size)
        self.context = int(context)
        self.pool_dim = 0  # known once a backbone is set up

    def setup(self, backbone: Backbone) -> int:
        with torch.no_grad():
            was = backbone.training
            side = self.input_size
            probe = backbone.eval().forward_features(torch.zeros(1, 3, side, side))
            backbone.train(was)
        self.pool_dim = probe[0].numel()
        return self.pool_dim

    def __call__(
        self,
        backbone: Backbone,
        images: Sequence[Tensor],
        boxes: Sequence[Tensor],
        *,
        chunk: int,
    ) -> Tensor:
        crops = torch.cat(
            [
                warp_regions(img, b, size=self.input_size, context=self.context)
                for img, b in zip(images, boxes)
            ]
        )
        if crops.shape[0] == 0:
            return crops.new_zeros((0, self.pool_dim))
        if torch.is_grad_enabled():  # training: one pass, the crops are a sampled batch
            chunk = crops.shape[0]
        return torch.cat(
            [backbone.forward_features(part).flatten(1) for part in crops.split(chunk)]
        )


class RegionDetector(Detector):
    """Regions + CNN features + per-class linear SVMs + box ridge regression: R-CNN and
    SPPNet, which differ in ``regions``.

    The detector contract (:class:`~visionlab.models.detector.Detector`): training gives
    ``{"loss_classifier"}`` of the fine-tuning; eval, per image ``{"boxes", "labels", "scores"}``
    (+ ``proposals: Tensor[P, 4]``, selective search's, with ``extras=("proposals",)``).

    Args:
        backbone: the convolutional part (:class:`~visionlab.models.backbones.Backbone`).
        regions: how region features come from the backbone (:class:`RegionFeatures`);
            it gives ``pool_dim``, the length of one region's pooled ("pool5") feature.
        num_classes: classes including background (``C + 1``).
        fc_width: width of fc6 and fc7.
        dropout: dropout after fc6 and fc7 (0.5 in the paper).
        proposals / finetune / svm / box_reg / test: settings dataclasses.
        detection: test-time :class:`~visionlab.models.postprocess.DetectionSettings`.

    Buffers (in the state dict): ``svm_weight [C, fc_width]``, ``svm_bias [C]``,
    ``svm_scale []`` (feature scaling), ``svm_fitted []``; ``bbox_weight [C, pool_dim + 1,
    4]``, ``bbox_scale []``, ``bbox_fitted []``.
    """

    supported_extras: ClassVar[frozenset[str]] = frozenset({"proposals"})
    stages: ClassVar[tuple[str, ...]] = ("proposals", "finetune", "features", "svm", "box_reg")
    train_stage: ClassVar[str] = "finetune"

    def __init__(
        self,
        *,
        backbone: Backbone,
        regions: RegionFeatures,
        num_classes: int,
        fc_width: int,
        dropout: float,
        proposals: ProposalSettings,
        finetune: FinetuneSettings,
        svm: SVMSettings,
        box_reg: BoxRegSettings,
        test: TestSettings,
        detection: DetectionSettings,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise VisionLabError(
                f"num_classes must count background + >= 1 class, got {num_classes}"
            )
        self.backbone = backbone
        self.regions = regions
        pool_dim = self.pool_dim = int(regions.setup(backbone))
        self.num_classes = int(num_classes)
        self.fc_width = int(fc_width)
        self.head = nn.Sequential(
            nn.Linear(pool_dim, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.cls_score = nn.Linear(fc_width, num_classes)
        self.proposal_settings = proposals
        self.finetune_settings = finetune
        self.svm_settings = svm
        self.box_reg_settings = box_reg
        self.test_settings = test
        self.detection_settings = detection
        self.box_coder = BoxCoder(weights=BOX_CODER_WEIGHTS)
        c = num_classes - 1
        self.register_buffer("svm_weight", torch.zeros(c, fc_width))
        self.register_buffer("svm_bias", torch.zeros(c))
        self.register_buffer("svm_scale", torch.ones(()))
        self.register_buffer("svm_fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("bbox_weight", torch.zeros(c, pool_dim + 1, 4))
        self.register_buffer("bbox_scale", torch.ones(()))
        self.register_buffer("bbox_fitted", torch.zeros((), dtype=torch.bool))
        self._matcher = Matcher(finetune.fg_iou, 0.0)
        self._sampler = BalancedSampler(finetune.regions_per_image, finetune.fg_fraction)
        self.stage_images, self.stage_eval_images = finetune.images, finetune.eval_images

    # ------------------------------------------------------------------ parts

    def pool_features(self, images: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Pooled features ``Tensor[sum K_i, pool_dim]`` of ``boxes[i]`` (xyxy) of ``images[i]``."""
        return self.regions(self.backbone, images, boxes, chunk=self.test_settings.chunk)

    def fc_features(self, pooled: Tensor) -> Tensor:
        """fc7: ``Tensor[K, pool_dim] -> Tensor[K, fc_width]``."""
        return self.head(pooled)

    @torch.no_grad()
    def propose(self, image: Tensor) -> Tensor:
        """Selective-search boxes ``Tensor[K, 4]`` xyxy of ``image [3, H, W]`` (sec. 2.1)."""
        s = self.proposal_settings
        boxes = selective_search(
            image.detach().cpu(), s.mode, s.max_proposals, cache=s.cache, search_size=s.search_size
        )
        wh = boxes[:, 2:] - boxes[:, :2]
        boxes = boxes[(wh >= s.min_size).all(dim=1)]
        return boxes.to(image.device)

    def class_scores(self, fc7: Tensor) -> Tensor:
        """``Tensor[K, C]`` scores in [0, 1] of classes 1..C: ``sigmoid`` of the SVM margins
        (a monotone map, so rankings and AP are the SVMs'), or the fine-tuned softmax
        before the SVMs are fitted."""
        if bool(self.svm_fitted):  # margins w_c . (s * x) + b_c
            return torch.sigmoid((fc7 * self.svm_scale) @ self.svm_weight.T + self.svm_bias)
        return F.softmax(self.cls_score(fc7), dim=1)[:, 1:]

    def regress_boxes(self, pooled: Tensor, boxes: Tensor) -> Tensor:
        """Per-class refined boxes ``Tensor[K, C, 4]`` (the boxes themselves when off)."""
        c = self.num_classes - 1
        if not (bool(self.bbox_fitted) and self.test_settings.box_regression):
            return boxes[:, None, :].expand(-1, c, 4)
        x = torch.cat([pooled * self.bbox_scale, pooled.new_ones(pooled.shape[0], 1)], dim=1)
        deltas = torch.einsum("kd,cdt->kct", x, self.bbox_weight)  # [K, C, 4]
        return self.box_coder.decode(deltas.reshape(len(boxes), 4 * c), boxes).view(-1, c, 4)

    # ------------------------------------------------------------------ stages

    def run_stage(
        self, name: str, dataset: Any, indices: Sequence[int], *, cache: Path, progress: bool
    ) -> dict[str, float]:
        """Stage ``name`` (proposals, features, svm or box_reg): :data:`STAGE_WORK`."""
        return STAGE_WORK[name](self, dataset, indices, cache, progress)

    def train_stage_data(
        self, dataset: Any, indices: Sequence[int], *, cache: Path
    ) -> RegionTrainingSet:
        """Fine-tuning (sec. 2.3): freeze the backbone unless ``finetune.train_conv``; the
        samples are ``dataset[i]`` for ``i`` in ``indices`` with their cached proposals,
        mirrored when ``finetune.hflip``."""
        if not self.finetune_settings.train_conv:
            self.freeze_backbone()
        flip = self.finetune_settings.hflip
        return RegionTrainingSet(dataset, indices, load_proposals(cache), flip=flip)

    # ------------------------------------------------------------------ forward

    def losses(self, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        """``{"loss_classifier"}``: cross-entropy of the (N + 1)-way fine-tuning classifier on a
        balanced sample of regions (targets may carry precomputed ``proposals``)."""
        proposals = [
            t["proposals"] if "proposals" in t else self.propose(img)
            for img, t in zip(images, targets)
        ]
        sampled, labels, _, _ = sample_proposals(
            proposals,
            targets,
            matcher=self._matcher,
            sampler=self._sampler,
            box_coder=self.box_coder,
            add_gt=True,  # R-CNN fine-tunes on the ground-truth boxes too
        )
        logits = self.cls_score(self.fc_features(self.pool_features(images, sampled)))
        return {"loss_classifier": F.cross_entropy(logits, labels.to(logits.device))}

    @torch.no_grad()
    def detect(self, images: Sequence[Tensor], extras: frozenset[str]) -> list[dict[str, Tensor]]:
        """Test-time detection (sec. 2.2), one image at a time."""
        results = []
        for image in images:
            boxes = self.propose(image)
            pooled = self.pool_features([image], [boxes])
            scores = self.class_scores(self.fc_features(pooled))
            refined = self.regress_boxes(pooled, boxes)
            out = self.postprocess(refined, scores, tuple(image.shape[-2:]))
            if "proposals" in extras:
                out["proposals"] = boxes
            results.append(out)
        return results

    def postprocess(
        self, boxes: Tensor, scores: Tensor, image_size: tuple[int, int] | None = None
    ) -> dict[str, Tensor]:
        """:func:`~visionlab.models.postprocess.postprocess_detections` of per-class
        ``boxes [K, C, 4]`` and ``scores [K, C]`` with :attr:`detection_settings`."""
        return postprocess_detections(scores, boxes, image_size, self.detection_settings)


def build_region_detector(where: str, regions: RegionFeatures, args: dict) -> RegionDetector:
    """A :class:`RegionDetector` with ``regions`` from the arguments ``args`` of the ``rcnn``
    or ``sppnet`` builder (``where``): the backbone, fc6 / fc7, the settings dicts and the
    test-time knobs."""
    net = build_backbone(
        args["backbone"], pretrained=args["pretrained_backbone"], width=args["backbone_width"]
    )
    reject_nested_knobs(args["test"], f"{where} test")
    settings = {
        "proposals": ProposalSettings,
        "finetune": FinetuneSettings,
        "svm": SVMSettings,
        "box_reg": BoxRegSettings,
        "test": TestSettings,
    }
    return RegionDetector(
        backbone=net,
        regions=regions,
        num_classes=args["num_classes"],
        fc_width=args["fc_width"],
        dropout=args["dropout"],
        **{key: settings_from(cls, args[key], f"{where}.{key}") for key, cls in settings.items()},
        detection=DetectionSettings(**{k: args[k] for k in DETECTION_KNOBS}),
    )


@register_model(
    "rcnn",
    task="detection",
    summary="R-CNN (2014): selective search, warped-region CNN, SVMs + box regression",
    renamed_args=RENAMED_BACKBONE_ARGS,
)
def rcnn(
    *,
    num_classes: int = 8,
    backbone: str = "tiny_cnn",
    backbone_width: int = 16,
    pretrained_backbone: str | None = None,
    input_size: int = 64,
    context: int = 4,
    fc_width: int = 256,
    dropout: float = 0.5,
    proposals: dict | None = None,
    finetune: dict | None = None,
    svm: dict | None = None,
    box_reg: dict | None = None,
    test: dict | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.3,
    detections_per_img: int = 100,
    min_size: float = 1e-2,
) -> RegionDetector:
    """R-CNN on a visionlab backbone: a :class:`RegionDetector` with :class:`WarpedRegions`.

    Args:
        num_classes: classes including background.
        backbone: a backbone name (``alexnet`` with ``input_size=227, context=16`` is the
            paper's setting); ``backbone_width``: ``tiny_cnn`` stem width.
        pretrained_backbone: weights file for the backbone (sec. 2.3 pre-training).
        input_size, context: warped region side and context pixels at that scale.
        fc_width, dropout: fc6 / fc7.
        proposals, finetune, svm, box_reg, test: dicts of :class:`ProposalSettings`,
            :class:`FinetuneSettings`, :class:`~visionlab.models.svm.SVMSettings`,
            :class:`BoxRegSettings`, :class:`TestSettings` fields.
        score_thresh, nms_thresh, detections_per_img, min_size: the test-time
            :class:`~visionlab.models.postprocess.DetectionSettings`.
    """
    regions = WarpedRegions(input_size=input_size, context=context)
    return build_region_detector("rcnn", regions, locals())
