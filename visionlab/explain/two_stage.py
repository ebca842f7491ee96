"""Fast, Faster and Mask R-CNN and the relation head explained, on the two-stage skeleton:
the proposals (selective search, or the RPN's anchors, labels and NMS), the RoIs the box head
keeps, the detections, Mask R-CNN's 28 x 28 masks before and after pasting, and the
relation head's best pairs."""

from __future__ import annotations

from contextlib import ExitStack

import torch
import torch.nn.functional as F
from torch import Tensor

from visionlab.explain.common import (
    Scene,
    Step,
    captured,
    detections_step,
    figure,
    figure_image,
    no_ticks,
    objects_of,
    run_detector,
    search_how,
)
from visionlab.explain.regions import proposals_step
from visionlab.explain.rpn import RPNView, anchor_labels_step, anchors_step, proposal_steps
from visionlab.models.two_stage import TwoStageDetector
from visionlab.viz import class_name, draw_detections, draw_relations

SHOWN_ROIS = 12
SHOWN_MASKS = 8
SHOWN_RELATIONS = 10


def _detect(
    model: TwoStageDetector, scene: Scene
) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
    """The model's detections (with proposals), the box head's class probabilities of each
    proposal ``[P, K + 1]`` and, for Mask R-CNN, the mask head's logits ``[N, K or 1, M, M]``
    of the detections, caught on their way out of the heads."""
    extras = ["proposals"] + (["relation_pairs"] if "relation" in model.roi_heads else [])
    box, mask_out = model.roi_heads["box"], []
    with ExitStack() as stack:
        box_out = stack.enter_context(captured(box.head))
        if "mask" in model.roi_heads:
            mask_out = stack.enter_context(captured(model.roi_heads["mask"].predictor))
        detections = run_detector(model, scene, extras)
    logits = box_out[0][0] if box_out else torch.zeros(0, box.num_classes)
    probs = F.softmax(logits.detach().float().cpu(), dim=1)
    masks = mask_out[0].detach().float().cpu() if mask_out else None
    return detections, probs, masks


def rois_step(model: TwoStageDetector, scene: Scene, proposals: Tensor, probs: Tensor) -> Step:
    """The proposals the box head keeps: a foreground class scoring at least the model's
    score threshold, drawn as RoIs (before box regression and NMS)."""
    box = model.roi_heads["box"]
    thresh = box.detection_settings.score_thresh
    best, labels = probs[:, 1:].max(dim=1)
    labels = labels + 1
    kept = torch.where(best >= thresh)[0]
    kept = kept[best[kept].argsort(descending=True)]
    shown = kept[:SHOWN_ROIS]
    pool = (
        f"{box.settings.pooler.replace('_', ' ')} {box.settings.pool_size}x{box.settings.pool_size}"
    )
    sentence = (
        f"The box head pools each of the {len(proposals)} proposals ({pool} on the shared "
        f"map) and classifies it; {len(kept)} have a class scoring at least {thresh:g} and go "
        f"on to box regression and class-wise NMS. The best {len(shown)} are drawn as RoIs, "
        "with their best class and its probability."
    )
    picture = draw_detections(
        scene.image, proposals[shown], labels[shown], best[shown], scene.classes
    )
    facts = {"rois": len(proposals), "kept": len(kept), "score_thresh": thresh}
    return Step("rois_kept", "RoIs kept by the box head", sentence, picture, facts)


def fast_rcnn_steps(model: TwoStageDetector, scene: Scene) -> list[Step]:
    """Fast R-CNN: selective search, the RoIs kept, detections."""
    detections, probs, _ = _detect(model, scene)
    proposer = model.proposer
    proposals = detections["proposals"]
    return [
        proposals_step(scene, proposals, search_how(proposer.mode, proposer.search_size)),
        rois_step(model, scene, proposals, probs),
        detections_step(scene, detections, "Fast R-CNN"),
    ]


def faster_rcnn_steps(model: TwoStageDetector, scene: Scene) -> list[Step]:
    """Faster R-CNN (and Mask R-CNN, the relation head): anchors, anchor labels, proposals
    before and after NMS, the RoIs kept, detections, then the later heads' steps."""
    detections, probs, mask_logits = _detect(model, scene)
    view = RPNView(model, scene)
    objects = objects_of(scene, detections)
    steps = [anchors_step(view, objects), anchor_labels_step(view, objects)]
    steps += proposal_steps(view, detections["proposals"])
    steps.append(rois_step(model, scene, detections["proposals"], probs))
    if "mask" in model.roi_heads:
        steps += mask_steps(model, scene, detections, mask_logits)
    else:
        steps.append(detections_step(scene, detections, "Faster R-CNN"))
    if "relation" in model.roi_heads:
        steps.append(relations_step(scene, detections))
    return steps


def mask_steps(
    model: TwoStageDetector, scene: Scene, detections: dict[str, Tensor], logits: Tensor | None
) -> list[Step]:
    """Mask R-CNN: the top detections' mask probabilities on the head's grid (``logits``
    ``[N, K or 1, M, M]`` of every detection), then pasted."""
    head = model.roi_heads["mask"]
    keep = torch.where(detections["scores"] >= scene.score_threshold)[0][:SHOWN_MASKS]
    steps = []
    if logits is not None and len(keep):
        channel = (
            detections["labels"] - 1
            if logits.shape[1] > 1
            else torch.zeros_like(detections["labels"])
        )
        probs = logits[torch.arange(len(logits)), channel].sigmoid()[keep]
        side = probs.shape[-1]
        cols = min(4, len(keep))
        rows = -(-len(keep) // cols)
        fig = figure(2.4 * cols + 1.0, 2.6 * rows)
        axes = list(fig.subplots(rows, cols, squeeze=False).flat)
        for ax in axes[len(keep) :]:
            ax.set_axis_off()
        for ax, k, p in zip(axes, keep.tolist(), probs):
            image = ax.imshow(p.numpy(), cmap="magma", vmin=0, vmax=1)
            name = class_name(int(detections["labels"][k]), scene.classes, 1)
            ax.set_title(f"{k + 1}. {name} {float(detections['scores'][k]):.2f}", fontsize=9)
            no_ticks(ax)
        fig.colorbar(image, ax=axes, shrink=0.8, label="mask probability")
        sentence = (
            f"The mask head predicts, for each detection, a {side} x {side} grid of logits per "
            f"class from its RoI-aligned {head.settings.pool_size} x {head.settings.pool_size} "
            f"features; the predicted class's sigmoid is shown for the {len(keep)} best "
            f"detections scoring at least {scene.score_threshold:.2f}, before pasting."
        )
        facts = {"mask_size": side, "masks": len(keep), "probabilities": probs.tolist()}
        steps.append(Step("mask_grids", "Masks before pasting", sentence, figure_image(fig), facts))
    pasted = detections_step(scene, detections, "Mask R-CNN")
    pasted.sentence += (
        f" Each mask is stretched over its box, pasted into the image and cut at "
        f"{head.settings.mask_thresh:g}."
    )
    steps.append(pasted)
    return steps


def relations_step(scene: Scene, detections: dict[str, Tensor]) -> Step:
    """The relation head's best (subject, predicate, object) triplets as arrows."""
    relations = detections.get("relations", torch.zeros(0, 3, dtype=torch.long))
    scores = detections.get("relation_scores", torch.zeros(0))
    shown = min(len(relations), SHOWN_RELATIONS)
    # only the boxes the drawn triplets name, renumbered
    used = sorted({i for s, _, o in relations[:shown].tolist() for i in (s, o)})
    number = {old: new for new, old in enumerate(used)}
    drawn = torch.tensor(
        [[number[s], p, number[o]] for s, p, o in relations[:shown].tolist()], dtype=torch.long
    ).reshape(-1, 3)
    picture = draw_relations(
        scene.image,
        detections["boxes"][used],
        drawn,
        scene.predicates,
        labels=detections["labels"][used],
        class_names=scene.classes,
        relation_scores=scores[:shown],
        number_boxes=True,
    )
    pairs = len(detections.get("pairs", ()))
    sentence = (
        f"The relation head scores every ordered pair of detections ({pairs} pairs) for each "
        "predicate from the pair's union box, their geometry and their classes; a triplet's "
        "score is subject score x object score x predicate probability. The best "
        f"{shown} triplets are drawn as arrows from subject to object."
    )
    facts = {
        "pairs": pairs,
        "relations": [
            {"subject": s, "predicate": class_name(p, scene.predicates, 0), "object": o}
            for s, p, o in drawn.tolist()
        ],
    }
    return Step("relations", "Relationships", sentence, picture, facts)
