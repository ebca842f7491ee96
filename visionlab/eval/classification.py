"""Classification metrics: top-k accuracy and a streaming evaluator that also reports the
accuracy of each class (recall per class) and their mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from visionlab.errors import VisionLabError

__all__ = ["ClassificationEvaluator", "topk_accuracy"]


def _labels(labels: Tensor, num_classes: int) -> Tensor:
    labels = labels.reshape(-1).long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise VisionLabError(f"class label {int(bad)} is outside 0..{num_classes - 1}")
    return labels


def _topk_correct(logits: Tensor, labels: Tensor, ks: Sequence[int]) -> dict[int, Tensor]:
    """Per sample: is the label among the k highest logits, for each k (clipped to C)."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # [N, k_max]
    hits = top == labels[:, None]
    return {k: hits[:, : min(k, k_max)].any(dim=1) for k in ks}


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy.

    Args:
        logits: ``Tensor[N, C]`` scores (logits or probabilities).
        labels: ``Tensor[N]`` int class indices in ``0..C-1``.
        ks: the k values; a k larger than C counts as C (the key keeps its name, ``top5``).

    Returns:
        ``{"top1": float, "top5": float, ...}`` fractions in [0, 1]; NaN when N = 0.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got {tuple(logits.shape)}")
    labels = _labels(labels, logits.shape[1]).to(logits.device)
    if labels.numel() != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits rows but {labels.numel()} labels")
    if labels.numel() == 0:
        return {f"top{k}": float("nan") for k in ks}
    return {
        f"top{k}": float(c.float().mean()) for k, c in _topk_correct(logits, labels, ks).items()
    }


class ClassificationEvaluator:
    """Streaming top-k accuracy and per-class accuracy.

    ``update(preds, targets)``: ``preds`` is either logits ``Tensor[B, C]`` or a list of
    per-image prediction dicts with ``labels`` (the top-k class indices, best first);
    ``targets`` is ``Tensor[B]``, a collated dict with ``labels [B]``, or a list of dicts
    with a scalar ``labels``. ``compute()`` returns ``top1``, ``top5`` (the ``ks``),
    ``mean_class_acc`` and ``per_class`` (name -> top-1 accuracy; NaN for a class without
    samples, left out of the mean). ``primary = "top1"``.

    Args:
        num_classes: C.
        class_names: C names (default ``"0"``, ``"1"``, ...).
        ks: the k values of top-k accuracy.
    """

    primary = "top1"

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ks: Sequence[int] = (1, 5),
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = [str(c) for c in class_names or range(num_classes)]
        self.ks = tuple(sorted(set(ks) | {1}))
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self.hits = dict.fromkeys(self.ks, 0)
        self.count = 0
        self.per_class_hits = torch.zeros(self.num_classes, dtype=torch.int64)
        self.per_class_count = torch.zeros(self.num_classes, dtype=torch.int64)

    def _targets(self, targets: Any) -> Tensor:
        if isinstance(targets, Mapping):
            targets = targets["labels"]
        if isinstance(targets, Sequence) and not isinstance(targets, Tensor):
            items = [t["labels"] if isinstance(t, Mapping) else t for t in targets]
            targets = torch.as_tensor([int(t) for t in items], dtype=torch.int64)
        return _labels(torch.as_tensor(targets).detach().cpu(), self.num_classes)

    def update(self, preds: Tensor | Sequence[Mapping[str, Any]], targets: Any) -> None:
        """Add a batch of logits (or prediction dicts) and their labels."""
        labels = self._targets(targets)
        if isinstance(preds, Tensor):
            if preds.ndim != 2 or preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"logits must be [B, {self.num_classes}], got {tuple(preds.shape)}"
                )
            correct = _topk_correct(preds.detach().cpu().float(), labels, self.ks)
        else:
            tops = [_labels(torch.as_tensor(p["labels"]).cpu(), self.num_classes) for p in preds]
            correct = {
                k: torch.tensor([bool((t[:k] == y).any()) for t, y in zip(tops, labels.tolist())])
                for k in self.ks
            }
        n = len(labels)
        if len(correct[1]) != n:
            raise ValueError(f"{len(correct[1])} predictions for {n} labels")
        for k in self.ks:
            self.hits[k] += int(correct[k].sum())
        self.count += n
        self.per_class_count += torch.bincount(labels, minlength=self.num_classes)
        self.per_class_hits += torch.bincount(labels[correct[1]], minlength=self.num_classes)

    def compute(self) -> dict[str, Any]:
        """Accuracies (fractions in [0, 1]) of every sample since the last :meth:`reset`."""
        nan = float("nan")
        out: dict[str, Any] = {
            f"top{k}": self.hits[k] / self.count if self.count else nan for k in self.ks
        }
        acc = self.per_class_hits.double() / self.per_class_count.clamp(min=1).double()
        acc[self.per_class_count == 0] = nan
        out["mean_class_acc"] = float(acc.nanmean()) if (self.per_class_count > 0).any() else nan
        out["per_class"] = dict(zip(self.class_names, acc.tolist()))
        return out
