"""The stages of R-CNN and SPPNet (:attr:`~visionlab.models.rcnn.RegionDetector.stages`;
R-CNN sec. 2.3 and appendix C): ``proposals`` (to ``CACHE/proposals.pt``), ``finetune``
(the engine's Trainer on :class:`RegionTrainingSet`), ``features`` (to
``CACHE/features.pt``), ``svm`` and ``box_reg`` (:data:`STAGE_WORK`); fitted parts are the
model's buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from visionlab.engine.checkpoint import atomic_write
from visionlab.errors import VisionLabError
from visionlab.models.svm import fit_ridge, mine_hard_negatives
from visionlab.ops import box_iou

__all__ = ["STAGE_WORK", "RegionTrainingSet", "hflip", "load_proposals"]

PROPOSALS_FILE = "proposals.pt"
FEATURES_FILE = "features.pt"


def _bar(iterable: Any, desc: str, progress: bool) -> Any:
    return tqdm(iterable, desc=desc, disable=not progress, dynamic_ncols=True)


def _save(path: Path, data: Any) -> None:
    """``torch.save`` through the one atomic writer: a killed stage leaves no half file."""
    atomic_write(path, lambda f: torch.save(data, f))


def _load(path: Path, stage: str) -> Any:
    if not path.is_file():
        raise VisionLabError(f"{path}: missing; run the `{stage}` stage again")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_proposals(cache: Path) -> list[Tensor]:
    """The ``proposals`` stage's boxes: one ``Tensor[K_j, 4]`` xyxy per stage image."""
    data = _load(cache / PROPOSALS_FILE, "proposals")
    return list(data["boxes"].split(data["counts"].tolist()))


def hflip(image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """Mirror ``image [3, H, W]`` with its target's ``boxes`` and ``proposals`` (xyxy)."""
    width = image.shape[-1]
    out = dict(target)
    for key in ("boxes", "proposals"):
        b = target[key]
        out[key] = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
    return image.flip(-1), out


class RegionTrainingSet(Dataset):
    """The fine-tuning samples (R-CNN sec. 2.3): sample ``j`` is ``dataset[indices[j]]`` with
    ``proposals: Tensor[K_j, 4]`` added to its target, mirrored (boxes and proposals too)
    with probability 0.5 when ``flip``.

    The coin is torch's global RNG: a loader that seeds every sample (visionlab's
    ``build_loader`` does, from seed, epoch and index) makes the flips repeat exactly.
    """

    def __init__(
        self, dataset: Any, indices: Sequence[int], proposals: Sequence[Tensor], *, flip: bool
    ) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.proposals = list(proposals)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[Tensor, dict[str, Any]]:
        image, target = self.dataset[self.indices[j]]
        target = {**target, "proposals": self.proposals[j]}
        if self.flip and torch.rand(()) < 0.5:
            image, target = hflip(image, target)
        return image, target


@torch.no_grad()
def proposals_stage(model: Any, dataset: Any, indices: Sequence[int], cache: Path, progress: bool):
    """Selective search over the stage images (sec. 2.1; cached on disk by the op too)."""
    boxes = [model.propose(dataset[i][0]).cpu() for i in _bar(indices, "proposals", progress)]
    counts = torch.tensor([len(b) for b in boxes], dtype=torch.int64)
    flat = torch.cat(boxes) if boxes else torch.zeros((0, 4))
    _save(cache / PROPOSALS_FILE, {"boxes": flat, "counts": counts})
    return {"mean_proposals": sum(len(b) for b in boxes) / max(1, len(boxes))}


@torch.no_grad()
def features_stage(model: Any, dataset: Any, indices: Sequence[int], cache: Path, progress: bool):
    """fc7 of gt boxes and proposals, pool features of the regression set, to disk."""
    model.eval()
    device = model.svm_weight.device
    proposals = load_proposals(cache)
    num_fg = model.num_classes - 1
    min_iou = model.box_reg_settings.min_iou
    pos, pos_labels, neg, neg_iou, reg_x, reg_t, reg_labels = [], [], [], [], [], [], []
    for j, i in enumerate(_bar(indices, "features", progress)):
        image, target = dataset[i]
        image = image.to(device)
        gt, labels = target["boxes"].to(device), target["labels"].to(device)
        props = proposals[j].to(device)
        pooled = model.pool_features([image, image], [gt, props])
        fc7 = model.fc_features(pooled)
        pos.append(fc7[: len(gt)].cpu())
        pos_labels.append(labels.cpu())
        pooled_p, fc7_p = pooled[len(gt) :], fc7[len(gt) :]
        neg.append(fc7_p.half().cpu())
        class_iou = torch.zeros(len(props), num_fg, device=device)
        if len(gt):
            iou = box_iou(gt, props)  # [G, K]
            for g in range(len(gt)):  # best IoU with any instance of each class
                c = int(labels[g]) - 1
                class_iou[:, c] = torch.maximum(class_iou[:, c], iou[g])
            best, arg = iou.max(dim=0)
            sel = best > min_iou
            reg_x.append(pooled_p[sel].cpu())
            reg_t.append(model.box_coder.encode(gt[arg[sel]], props[sel]).cpu())
            reg_labels.append(labels[arg[sel]].cpu())
        neg_iou.append(class_iou.half().cpu())

    def cat(parts: list[Tensor], shape: tuple[int, ...], dtype=torch.float32) -> Tensor:
        return torch.cat(parts) if parts else torch.zeros(shape, dtype=dtype)

    data = {
        "pos": cat(pos, (0, model.fc_width)),
        "pos_labels": cat(pos_labels, (0,), torch.int64),
        "props": cat(neg, (0, model.fc_width)),
        "props_class_iou": cat(neg_iou, (0, num_fg)),
        "reg_features": cat(reg_x, (0, model.pool_dim)),
        "reg_targets": cat(reg_t, (0, 4)),
        "reg_labels": cat(reg_labels, (0,), torch.int64),
    }
    _save(cache / FEATURES_FILE, data)
    return {
        "positives": len(data["pos"]),
        "proposals": len(data["props"]),
        "regression_samples": len(data["reg_features"]),
    }


@torch.no_grad()
def svm_stage(model: Any, dataset: Any, indices: Sequence[int], cache: Path, progress: bool):
    """One linear SVM per class on fc7, hard negative mining over the cached proposals."""
    data, settings = _load(cache / FEATURES_FILE, "features"), model.svm_settings
    all_fc = torch.cat([data["pos"], data["props"].float()])
    scale = settings.feat_norm / all_fc.norm(dim=1).mean().clamp(min=1e-6)
    stats: dict[str, float] = {"feature_scale": float(scale)}
    weight = torch.zeros_like(model.svm_weight, device="cpu")
    bias = torch.zeros_like(model.svm_bias, device="cpu")
    for c in _bar(range(1, model.num_classes), "svm", progress):
        positives = data["pos"][data["pos_labels"] == c] * scale
        negatives = data["props"][data["props_class_iou"][:, c - 1].float() < settings.neg_iou]
        chunks = [chunk.float() * scale for chunk in negatives.chunk(max(1, settings.chunks))]
        if len(positives) == 0:
            bias[c - 1] = -10.0  # never seen: never fires
            continue
        w, b, info = mine_hard_negatives(positives, chunks, settings)
        weight[c - 1], bias[c - 1] = w, b
        stats[f"cache/{c}"] = info["cache"]
        stats[f"negatives/{c}"] = info["seen"]
    model.svm_weight.copy_(weight)
    model.svm_bias.copy_(bias)
    model.svm_scale.fill_(float(scale))
    model.svm_fitted.fill_(True)
    return stats


@torch.no_grad()
def box_reg_stage(model: Any, dataset: Any, indices: Sequence[int], cache: Path, progress: bool):
    """One ridge regressor per class from pool features to box deltas (appendix C)."""
    data, settings = _load(cache / FEATURES_FILE, "features"), model.box_reg_settings
    x = data["reg_features"]
    scale = settings.feat_norm / x.norm(dim=1).mean().clamp(min=1e-6) if len(x) else 1.0
    weight = torch.zeros_like(model.bbox_weight, device="cpu")
    stats: dict[str, float] = {"samples": len(x)}
    for c in _bar(range(1, model.num_classes), "box_reg", progress):
        sel = data["reg_labels"] == c
        if int(sel.sum()) == 0:
            continue
        weight[c - 1] = fit_ridge(x[sel] * scale, data["reg_targets"][sel], ridge=settings.ridge)
        stats[f"samples/{c}"] = int(sel.sum())
    model.bbox_weight.copy_(weight)
    model.bbox_scale.fill_(float(scale))
    model.bbox_fitted.fill_(True)
    return stats


# The stages' work but the Trainer's: fn(model, dataset, indices, cache, progress) -> stats.
STAGE_WORK: dict[str, Callable[..., dict[str, float]]] = {
    "proposals": proposals_stage,
    "features": features_stage,
    "svm": svm_stage,
    "box_reg": box_reg_stage,
}
