"""Region proposal metrics: recall at IoU thresholds and average recall (AR), for the top N
proposals of each image (Hosang et al. 2015, "What makes for effective detection
proposals?"; AR as the mean recall over IoU 0.5:0.05:0.95, the COCO convention).

A ground-truth box counts as recalled at threshold t when some proposal among the image's
first N has IoU >= t with it (proposals are not used up by one box, as in Hosang et al.).
Proposals are taken in the order given: sort them by objectness first where there is one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["AR_IOU_THRESHOLDS", "ProposalEvaluator", "proposal_recall"]

AR_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _best_ious(proposals: Sequence[Tensor], gts: Sequence[Tensor], max_proposals) -> Tensor:
    """``[len(max_proposals), total_gt]``: each gt's best IoU with its image's first N."""
    if len(proposals) != len(gts):
        raise ValueError(f"{len(proposals)} proposal sets for {len(gts)} images")
    columns = []
    for props, gt in zip(proposals, gts):
        props, gt = props.detach().reshape(-1, 4).float(), gt.detach().reshape(-1, 4).float()
        best = torch.zeros(len(max_proposals), len(gt))
        if len(props) and len(gt):
            iou = box_iou(gt, props.to(gt.device)).cpu()  # [M, K]
            # running max over proposals, read at each N
            running = iou.cummax(dim=1).values
            for i, n in enumerate(max_proposals):
                best[i] = running[:, min(n, len(props)) - 1]
        columns.append(best)
    return torch.cat(columns, dim=1) if columns else torch.zeros(len(max_proposals), 0)


def _summary(best: Tensor, iou_thresholds, max_proposals) -> dict[str, float]:
    def recall(i: int, t: float) -> float:
        return float((best[i] >= t).double().mean()) if best.shape[1] else float("nan")

    out = {}
    for i, n in enumerate(max_proposals):
        out.update({f"R@{n}@{t:g}": recall(i, t) for t in iou_thresholds})
        out[f"AR@{n}"] = sum(recall(i, t) for t in AR_IOU_THRESHOLDS) / len(AR_IOU_THRESHOLDS)
    return out


def proposal_recall(
    proposals: Sequence[Tensor],
    gts: Sequence[Tensor],
    iou_thresholds: Sequence[float] = (0.5, 0.7),
    max_proposals: Sequence[int] = (100, 300, 1000, 2000),
) -> dict[str, float]:
    """Recall of region proposals over a dataset.

    Args:
        proposals: per image ``Tensor[K, 4]`` xyxy, best first.
        gts: per image ``Tensor[M, 4]`` xyxy ground-truth boxes.
        iou_thresholds: thresholds at which to report recall.
        max_proposals: the N values (first N proposals of each image).

    Returns:
        ``{"R@N@t": recall, "AR@N": average recall}`` for each N and t, e.g. ``"R@1000@0.7"``
        and ``"AR@1000"`` (AR: mean recall at IoU 0.5:0.05:0.95); NaN without ground truth.
    """
    best = _best_ious(proposals, gts, tuple(max_proposals))
    return _summary(best, tuple(iou_thresholds), tuple(max_proposals))


class ProposalEvaluator:
    """Streaming :func:`proposal_recall`.

    ``update(proposals, targets)``: ``proposals`` per image a ``Tensor[K, 4]`` or a dict
    with ``proposal_boxes`` or ``boxes``; ``targets`` per image a dict with ``boxes`` (crowd
    boxes, ``iscrowd`` = 1, are left out) or a ``Tensor[M, 4]``. ``compute()`` returns the
    keys of :func:`proposal_recall`; ``primary`` is ``"AR@N"`` for the largest N.
    """

    def __init__(
        self,
        iou_thresholds: Sequence[float] = (0.5, 0.7),
        max_proposals: Sequence[int] = (100, 300, 1000, 2000),
    ) -> None:
        self.iou_thresholds, self.max_proposals = tuple(iou_thresholds), tuple(max_proposals)
        self.primary = f"AR@{max(self.max_proposals)}"
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._best: list[Tensor] = []

    @staticmethod
    def _boxes(item: Any, keys: tuple[str, ...]) -> Tensor:
        if isinstance(item, Mapping):
            key = next((k for k in keys if k in item), None)
            if key is None:
                raise ValueError(f"expected one of {keys} in {sorted(item)}")
            boxes = torch.as_tensor(item[key]).reshape(-1, 4)
            if "iscrowd" in item and key == "boxes":
                boxes = boxes[~torch.as_tensor(item["iscrowd"]).reshape(-1).bool().to(boxes.device)]
            return boxes
        return torch.as_tensor(item).reshape(-1, 4)

    def update(self, proposals: Sequence[Any], targets: Sequence[Any]) -> None:
        """Add a batch of per-image proposals and targets."""
        props = [self._boxes(p, ("proposal_boxes", "boxes")) for p in proposals]
        gts = [self._boxes(t, ("boxes",)) for t in targets]
        self._best.append(_best_ious(props, gts, self.max_proposals))

    def compute(self) -> dict[str, float]:
        """Recall and AR of every image seen since the last :meth:`reset`."""
        best = torch.cat(self._best, 1) if self._best else torch.zeros(len(self.max_proposals), 0)
        return _summary(best, self.iou_thresholds, self.max_proposals)
