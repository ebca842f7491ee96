"""Visual relationship detection: a predicate head on the two-stage skeleton, after Lu,
Krishna, Bernstein and Fei-Fei, "Visual Relationship Detection with Language Priors" (ECCV
2016) and Zellers, Yatskar, Thomson and Choi, "Neural Motifs: Scene Graph Parsing with
Global Context" (CVPR 2018).

The model is Faster R-CNN's skeleton (:class:`visionlab.models.two_stage.TwoStageDetector`)
with :class:`RelationHead` after the box head in its
:class:`~visionlab.models.heads.RoIHeads`. For every ordered pair of objects (subject,
object) the head sees:

- ``visual``: the union box of the pair pooled from the shared features by RoI align
  (Lu et al. sec. 4.1 take a CNN feature of the union), with two more channels marking where
  the subject's and the object's boxes lie in it (the "spatial masks" of Dai et al. 2017),
  so that the order of the pair is visible; one 3x3 convolution and a fully connected layer;
- ``spatial``: :func:`spatial_encoding`, the pair's geometry (relative offsets, log size
  ratios, IoU, intersection over each box, the union's position and area);
- ``class``: the two class labels, each embedded (Zellers et al. condition on the labels);

and a classifier over the ``P`` predicates plus "no relation" (index 0). The triplet score
is subject score x object score x predicate probability (Lu et al. eq. 6, without the
language prior); each image keeps its ``relations_per_image`` best triplets, one predicate
per pair (the graph constraint) unless ``graph_constraint`` is off.

The frequency baseline of Zellers et al. (sec. 4, "FREQ") is the same head with
``predictor="frequency"``: the predicate distribution given the two classes, counted on
the training set (:meth:`RelationHead.prepare_data`); ``frequency_bias`` adds its log to
the learned logits (their MotifNet's frequency bias).

Training enumerates the ordered pairs of each image's ground-truth objects: related pairs
are positives (one of a pair's predicates at random when it has several), the others "no
relation", sampled up to ``negative_ratio`` per positive; the loss is the cross-entropy
``loss_relation``. Three modes at test time (Xu et al. 2017): predicate classification
(boxes and labels given), scene-graph classification (boxes given, labels from the box
head) and relationship detection (image only); see the skeleton's ``given`` argument.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlab.errors import VisionLabError
from visionlab.eval.relations import rank_triplets
from visionlab.models.faster_rcnn import faster_rcnn, faster_rcnn_arguments
from visionlab.models.heads import RoIBatch, settings_from
from visionlab.models.registry import register_model
from visionlab.models.two_stage import TwoStageDetector
from visionlab.ops import enclosing_boxes, nms

__all__ = [
    "FEATURES",
    "RelationHead",
    "RelationHeadSettings",
    "pair_labels",
    "relation_freq",
    "relation_rcnn",
    "spatial_encoding",
]

FEATURES = ("visual", "spatial", "class")
PREDICTORS = ("learned", "frequency")
SPATIAL_DIM = 12


@dataclass
class RelationHeadSettings:
    """Settings of :class:`RelationHead` (module docstring).

    Attributes:
        predictor: ``learned`` (the classifier) or ``frequency`` (the counted baseline).
        features: what the learned classifier sees, a subset of :data:`FEATURES`.
        frequency_bias: add the log of the counted frequencies to the learned logits.
        object_features: the visual branch also pools the subject's and the object's own
            boxes (as VTransE and Neural Motifs do), beside the union.
        pool_size: side of the union box's RoI-align grid.
        width: channels of the convolution and width of the fully connected layers.
        embed_dim: size of each class embedding.
        pairs_per_image: pairs sampled per training image, at most.
        negative_ratio: "no relation" pairs sampled per related pair.
        max_objects: detections (best first) paired at test time.
        object_nms: IoU of the class-agnostic NMS among detections before pairing (1: off).
        relations_per_image: triplets kept per image.
        graph_constraint: one predicate per pair in the output (Lu et al.); off: any.
    """

    predictor: str = "learned"
    features: tuple[str, ...] = FEATURES
    frequency_bias: bool = False
    object_features: bool = True
    pool_size: int = 7
    width: int = 256
    embed_dim: int = 32
    pairs_per_image: int = 128
    negative_ratio: float = 1.0
    max_objects: int = 32
    object_nms: float = 1.0
    relations_per_image: int = 100
    graph_constraint: bool = True

    def __post_init__(self) -> None:
        self.features = tuple(self.features)
        if self.predictor not in PREDICTORS:
            raise VisionLabError(
                f"relation head: predictor must be one of {PREDICTORS}, got {self.predictor!r}"
            )
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or (self.predictor == "learned" and not self.features):
            raise VisionLabError(
                f"relation head: features must be a non-empty subset of {FEATURES}, "
                f"got {list(self.features)}"
            )
        if min(self.pool_size, self.width, self.embed_dim, self.max_objects) < 1:
            raise VisionLabError("relation head: sizes and max_objects must be >= 1")
        if not 0 < self.object_nms <= 1:
            raise VisionLabError(
                f"relation head: object_nms must be in (0, 1], got {self.object_nms}"
            )
        if self.pairs_per_image < 1 or self.relations_per_image < 1 or self.negative_ratio < 0:
            raise VisionLabError(
                "relation head: pairs_per_image and relations_per_image must be >= 1, "
                "negative_ratio >= 0"
            )


def all_pairs(n: int, device: torch.device | None = None) -> Tensor:
    """``Tensor[n (n - 1), 2]`` every ordered pair ``(i, j)``, ``i != j``, row-major."""
    idx = torch.arange(n, device=device)
    i, j = torch.meshgrid(idx, idx, indexing="ij")
    keep = i != j
    return torch.stack([i[keep], j[keep]], dim=1)


def pair_labels(num_objects: int, relations: Tensor, generator: Any = None) -> Tensor:
    """``Tensor[n, n]`` int64: predicate + 1 of each ordered pair, 0 = no relation.

    Args:
        num_objects: ``n``.
        relations: ``Tensor[R, 3]`` (subject, predicate 0..P-1, object).
        generator: for the choice among several predicates of one pair.
    """
    labels = torch.zeros((num_objects, num_objects), dtype=torch.int64, device=relations.device)
    if len(relations):
        order = torch.randperm(len(relations), generator=generator).to(relations.device)
        rel = relations[order].long()
        # several predicates of one pair: one of them, by the random order (last write)
        for s, p, o in rel.tolist():
            labels[s, o] = p + 1
    return labels


def sample_pairs(labels: Tensor, pairs_per_image: int, negative_ratio: float) -> Tensor:
    """The training pairs of one image: every related pair (up to ``pairs_per_image``, a
    random subset beyond) and up to ``negative_ratio`` x as many unrelated ones (at least
    one when the image has no related pair), within ``pairs_per_image``.

    Returns:
        ``Tensor[M, 2]`` (subject, object) indices, related pairs first.
    """
    pairs = all_pairs(labels.shape[0], labels.device)
    if len(pairs) == 0:
        return pairs
    related = labels[pairs[:, 0], pairs[:, 1]] > 0
    pos, neg = pairs[related], pairs[~related]
    pos = pos[torch.randperm(len(pos), device=pos.device)[:pairs_per_image]]
    n_neg = math.ceil(negative_ratio * max(len(pos), 1))
    n_neg = min(n_neg, pairs_per_image - len(pos), len(neg))
    neg = neg[torch.randperm(len(neg), device=neg.device)[:n_neg]]
    return torch.cat([pos, neg])


def spatial_encoding(subject: Tensor, obj: Tensor, image_size: tuple[int, int]) -> Tensor:
    """The geometry of ordered pairs of boxes, ``Tensor[M, 12]``.

    Per pair: the object's centre offset from the subject's in subject widths and heights
    (``dx``, ``dy``) and the log width and height ratios (as Faster R-CNN encodes a box
    against another), their IoU, the intersection over the subject's and over the object's
    area, the union box's corners over the image size and its area over the image's. A
    horizontal flip negates ``dx`` ("left of" becomes "right of") and mirrors the union's
    x corners; every other entry stays.

    Args:
        subject, obj: ``Tensor[M, 4]`` xyxy pixels.
        image_size: ``(H, W)``.
    """
    height, width = float(image_size[0]), float(image_size[1])
    sw = (subject[:, 2] - subject[:, 0]).clamp(min=1e-3)
    sh = (subject[:, 3] - subject[:, 1]).clamp(min=1e-3)
    ow = (obj[:, 2] - obj[:, 0]).clamp(min=1e-3)
    oh = (obj[:, 3] - obj[:, 1]).clamp(min=1e-3)
    dx = ((obj[:, 0] + obj[:, 2]) - (subject[:, 0] + subject[:, 2])) / (2 * sw)
    dy = ((obj[:, 1] + obj[:, 3]) - (subject[:, 1] + subject[:, 3])) / (2 * sh)
    lt = torch.maximum(subject[:, :2], obj[:, :2])
    rb = torch.minimum(subject[:, 2:], obj[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    iou = inter / (sw * sh + ow * oh - inter)
    union = enclosing_boxes(subject, obj)
    scale = union.new_tensor([width, height, width, height])
    union_area = (union[:, 2] - union[:, 0]) * (union[:, 3] - union[:, 1])
    return torch.stack(
        [
            dx,
            dy,
            torch.log(ow / sw),
            torch.log(oh / sh),
            iou,
            inter / (sw * sh),
            inter / (ow * oh),
            *(union / scale).unbind(dim=1),
            union_area / (width * height),
        ],
        dim=1,
    )


def box_masks(boxes: Tensor, frames: Tensor, size: int) -> Tensor:
    """``Tensor[M, size, size]``: the fraction of each grid cell of ``frames`` (the union
    boxes) that ``boxes`` cover, per axis (a separable box filter, so 1 inside, 0 outside
    and partial on the edges)."""

    def cover(lo: Tensor, hi: Tensor, f_lo: Tensor, f_hi: Tensor) -> Tensor:
        step = ((f_hi - f_lo) / size).clamp(min=1e-6)[:, None]
        edges = f_lo[:, None] + step * torch.arange(size + 1, device=lo.device)
        left, right = edges[:, :-1], edges[:, 1:]
        span = torch.minimum(right, hi[:, None]) - torch.maximum(left, lo[:, None])
        return (span / step).clamp(0, 1)  # [M, size]

    cx = cover(boxes[:, 0], boxes[:, 2], frames[:, 0], frames[:, 2])
    cy = cover(boxes[:, 1], boxes[:, 3], frames[:, 1], frames[:, 3])
    return cy[:, :, None] * cx[:, None, :]


class RelationHead(nn.Module):
    """The relation branch of :class:`~visionlab.models.heads.RoIHeads` (module docstring).

    Called after the box head: in training on the ground-truth objects' pairs, returning
    ``{"loss_relation"}`` (nothing for the frequency baseline); in eval on each image's
    detections (or the given boxes), adding ``relations [R, 3]`` (subject index, predicate
    0..P-1, object index into the detections) and ``relation_scores [R]`` (best first), and
    ``pairs [M, 2]`` with ``predicate_scores [M, P]`` (every pair's triplet score for each
    predicate; the ``relation_pairs`` extra).

    Args:
        in_channels: channels of the feature maps.
        num_classes: object classes including background.
        num_predicates: ``P``.
        settings: :class:`RelationHeadSettings`.
    """

    extras = frozenset({"relation_pairs"})

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_predicates: int,
        settings: RelationHeadSettings | None = None,
    ) -> None:
        super().__init__()
        self.settings = s = settings or RelationHeadSettings()
        self.num_classes, self.num_predicates = int(num_classes), int(num_predicates)
        # counts[subject label, object label, 1 + predicate] (0: no relation), training set
        self.register_buffer("frequency", torch.zeros(num_classes, num_classes, num_predicates + 1))
        if s.predictor == "frequency":
            return
        width, fused = s.width, 0
        if "visual" in s.features:
            boxes_in = 3 if s.object_features else 1  # the union (+ subject and object)
            self.visual_conv = nn.Conv2d(boxes_in * in_channels + 2, width, 3, padding=1)
            self.visual_fc = nn.Linear(width * s.pool_size**2, width)
            fused += width
        if "spatial" in s.features:
            self.spatial = nn.Sequential(
                nn.Linear(SPATIAL_DIM, width), nn.ReLU(inplace=True), nn.Linear(width, width)
            )
            fused += width
        if "class" in s.features:
            self.subject_embed = nn.Embedding(num_classes, s.embed_dim)
            self.object_embed = nn.Embedding(num_classes, s.embed_dim)
            fused += 2 * s.embed_dim
        self.fuse = nn.Linear(fused, width)
        self.classifier = nn.Linear(width, num_predicates + 1)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)

    # ------------------------------------------------------------------ scoring

    def logits(
        self,
        batch: RoIBatch,
        boxes: list[Tensor],
        labels: list[Tensor],
        pairs: list[Tensor],
    ) -> Tensor:
        """``Tensor[M, P + 1]`` predicate logits of every image's ``pairs`` (indices into its
        ``boxes [N, 4]`` and ``labels [N]``), images concatenated."""
        s = self.settings
        subj = torch.cat([b[p[:, 0]] for b, p in zip(boxes, pairs)])
        obj = torch.cat([b[p[:, 1]] for b, p in zip(boxes, pairs)])
        subj_labels = torch.cat([lab[p[:, 0]] for lab, p in zip(labels, pairs)]).long()
        obj_labels = torch.cat([lab[p[:, 1]] for lab, p in zip(labels, pairs)]).long()
        log_freq = None
        if s.predictor == "frequency" or s.frequency_bias:
            counts = self.frequency[subj_labels, obj_labels] + 1.0  # add-one smoothing
            log_freq = torch.log(counts / counts.sum(dim=1, keepdim=True))
        if s.predictor == "frequency":
            return log_freq
        parts = []
        if "visual" in s.features:
            unions = enclosing_boxes(subj, obj)
            sizes = [p.shape[0] for p in pairs]
            pooled = batch.pool(unions.split(sizes), s.pool_size, "roi_align")
            if s.object_features:
                pooled = torch.cat(
                    [
                        pooled,
                        batch.pool(subj.split(sizes), s.pool_size, "roi_align"),
                        batch.pool(obj.split(sizes), s.pool_size, "roi_align"),
                    ],
                    dim=1,
                )
            masks = torch.stack(
                [box_masks(subj, unions, s.pool_size), box_masks(obj, unions, s.pool_size)], 1
            )
            x = F.relu(self.visual_conv(torch.cat([pooled, masks.to(pooled.dtype)], 1)))
            parts.append(F.relu(self.visual_fc(x.flatten(1))))
        if "spatial" in s.features:
            enc = [
                spatial_encoding(b[p[:, 0]], b[p[:, 1]], size)
                for b, p, size in zip(boxes, pairs, batch.image_sizes)
            ]
            parts.append(F.relu(self.spatial(torch.cat(enc))))
        if "class" in s.features:
            parts += [self.subject_embed(subj_labels), self.object_embed(obj_labels)]
        logits = self.classifier(F.relu(self.fuse(torch.cat(parts, dim=1))))
        return logits + log_freq if log_freq is not None else logits

    def forward(
        self, batch: RoIBatch, detections: list[dict[str, Tensor]]
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            return detections, self.loss(batch)
        s = self.settings
        objects = [self.objects(d, given=batch.given is not None) for d in detections]
        boxes = [d["boxes"][o] for d, o in zip(detections, objects)]
        labels = [d["labels"][o] for d, o in zip(detections, objects)]
        pairs = [all_pairs(len(b), b.device) for b in boxes]
        probs = self.logits(batch, boxes, labels, pairs).float().softmax(dim=1)[:, 1:]
        for d, o, p, pr in zip(detections, objects, pairs, probs.split([len(p) for p in pairs])):
            obj_scores = d["scores"][o].float()
            scores = obj_scores[p[:, 0], None] * obj_scores[p[:, 1], None] * pr
            d["pairs"], d["predicate_scores"] = o[p], scores  # indices into the detections
            d["relations"], d["relation_scores"] = rank_triplets(
                d["pairs"], scores, s.relations_per_image, s.graph_constraint
            )
        return detections, {}

    def objects(self, detections: dict[str, Tensor], given: bool = False) -> Tensor:
        """Indices of the detections paired: the best ``max_objects`` left by a
        class-agnostic NMS at ``object_nms`` (one label per object, as Zellers et al. take
        each box's best class; given boxes are all objects already)."""
        s, boxes = self.settings, detections["boxes"]
        if given or s.object_nms >= 1:
            keep = torch.arange(len(boxes), device=boxes.device)
        else:
            keep = nms(boxes.float(), detections["scores"].float(), s.object_nms)
        return keep[: s.max_objects]

    def loss(self, batch: RoIBatch) -> dict[str, Tensor]:
        """``{"loss_relation"}``: cross-entropy of the sampled ground-truth pairs (module
        docstring); ``{}`` for the frequency baseline, which learns nothing."""
        if self.settings.predictor == "frequency":
            return {}
        if batch.targets is None or any("relations" not in t for t in batch.targets):
            raise VisionLabError(
                "relation_rcnn: every training target needs 'relations' Tensor[R, 3] "
                "(a dataset with relationships, task: relation)"
            )
        s = self.settings
        boxes, labels, pairs, wanted = [], [], [], []
        for t in batch.targets:
            n = len(t["boxes"])
            rel = t["relations"].reshape(-1, 3).to(t["boxes"].device)
            lab = pair_labels(n, rel)
            p = sample_pairs(lab, s.pairs_per_image, s.negative_ratio)
            boxes.append(t["boxes"].float())
            labels.append(t["labels"])
            pairs.append(p)
            wanted.append(lab[p[:, 0], p[:, 1]])
        target = torch.cat(wanted)
        if len(target) == 0:  # no image with two objects: a zero that keeps the graph
            return {"loss_relation": sum(p.sum() for p in self.parameters()) * 0.0}
        logits = self.logits(batch, boxes, labels, pairs)
        return {"loss_relation": F.cross_entropy(logits.float(), target)}

    # --------------------------------------------------------------- data prep

    @torch.no_grad()
    def prepare_data(self, datasets: Iterable[Any], *, transform: Any = None) -> None:
        """Count ``frequency`` on the first of ``datasets`` (the training set), from its
        annotations (no image is decoded): each ordered pair of objects adds one to its
        predicates (or to "no relation")."""
        from tqdm.auto import tqdm

        dataset = next((d for d in datasets if d is not None), None)
        if dataset is None:
            return
        counts = torch.zeros_like(self.frequency, device="cpu")
        read = getattr(dataset, "annotations", None) or (lambda i: dataset[i][1])
        for i in tqdm(range(len(dataset)), desc="relation frequencies", unit="img", leave=False):
            target = read(i)
            lab = target["labels"].long()
            n = len(lab)
            rel = torch.as_tensor(target.get("relations", torch.zeros(0, 3))).reshape(-1, 3)
            related = torch.zeros((n, n), dtype=torch.bool)
            for s, p, o in rel.long().tolist():
                counts[lab[s], lab[o], p + 1] += 1
                related[s, o] = True
            pairs = all_pairs(n)
            free = pairs[~related[pairs[:, 0], pairs[:, 1]]]
            index = (lab[free[:, 0]], lab[free[:, 1]], torch.zeros_like(free[:, 0]))
            counts.index_put_(index, torch.ones(len(free)), accumulate=True)
        self.frequency.copy_(counts)


def _build(
    name: str, num_predicates: int, relation_head: Any, faster_args: dict[str, Any]
) -> TwoStageDetector:
    if int(num_predicates) < 1:
        raise VisionLabError(
            f"{name}: num_predicates must be >= 1 (filled in from the dataset's predicates by "
            "`visionlab train`; the dataset has none?)"
        )
    settings = settings_from(RelationHeadSettings, relation_head, f"{name} relation_head")
    model = faster_rcnn(**faster_args)
    model.roi_heads["relation"] = RelationHead(
        in_channels=model.feature_width,
        num_classes=model.roi_heads["box"].num_classes,
        num_predicates=num_predicates,
        settings=settings,
    )
    return model


@register_model(
    "relation_rcnn",
    task="relation",
    summary="Faster R-CNN + a predicate head on pairs: union RoI align, spatial, class "
    "embeddings (Lu et al. 2016, Zellers et al. 2018)",
)
@faster_rcnn_arguments
def relation_rcnn(
    *, num_predicates: int = 0, relation_head: dict | None = None, **faster_args: Any
) -> TwoStageDetector:
    """Build the relation detector: :func:`~visionlab.models.faster_rcnn.faster_rcnn` with
    its arguments, and a :class:`RelationHead` after the box head.

    Args:
        num_predicates: ``P`` (filled in from the dataset by ``train``).
        relation_head: :class:`RelationHeadSettings` fields, e.g. ``{"width": 64}``.
        **faster_args: :func:`~visionlab.models.faster_rcnn.faster_rcnn`'s arguments; the
            box part is built first, so from one seed it starts as Faster R-CNN does.
    """
    return _build("relation_rcnn", num_predicates, relation_head, faster_args)


@register_model(
    "relation_freq",
    task="relation",
    summary="Frequency baseline: Faster R-CNN + the predicate given the two classes, counted "
    "on the training set (Zellers et al. 2018)",
)
@faster_rcnn_arguments
def relation_freq(
    *, num_predicates: int = 0, relation_head: dict | None = None, **faster_args: Any
) -> TwoStageDetector:
    """:func:`relation_rcnn` with ``relation_head.predictor = "frequency"``: the detector is
    trained, the predicates are counted (:meth:`RelationHead.prepare_data`)."""
    head = {**(relation_head or {}), "predictor": "frequency"}
    return _build("relation_freq", num_predicates, head, faster_args)
