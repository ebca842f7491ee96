"""YOLO's grid arithmetic and loss, pure tensor functions: box encoding on the S x S grid, the
responsible predictor of each object, and the sum-squared loss of YOLO v1 (Redmon et al.,
CVPR 2016, Sec. 2.2, eq. 3), plus the anchor-prior variant of YOLO9000 (CVPR 2017, Sec. 2).

Grid tensors are ``[N, S, S, ...]`` indexed ``[image, row, col]``: row follows y, col x.
Box parameters: v1 ``(x, y, sqrt_w, sqrt_h)`` (the centre's offset in its cell, square
roots of the size relative to the image); anchors ``(sx, sy, tw, th)`` (the offset in its
cell, ``log(w / prior_w)``, ``log(h / prior_h)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from visionlab.ops.boxes import box_iou

# YOLO9000 (its reference code): a prediction overlapping some object by more than this is
# not pushed towards "no object".
PRIOR_IGNORE_IOU = 0.6


@dataclass(frozen=True)
class YoloLossConfig:
    """Weights of the loss terms (YOLO v1, Sec. 2.2).

    Attributes:
        lambda_coord: weight of the coordinate terms (5 in the paper).
        lambda_noobj: weight of the confidence term of predictors without an object (0.5).
    """

    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5


# ---------------------------------------------------------------------- grid geometry


def cells_of(boxes: Tensor, image_size: tuple[int, int], S: int) -> Tensor:
    """The grid cell holding each box centre: the cell responsible for that object.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy in pixels of an image of ``image_size`` ``(H, W)``.
        S: cells per side.

    Returns:
        ``Tensor[N, 2] int64`` ``(row, col)``.
    """
    h, w = image_size
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    col = (cx * S / w).floor().long().clamp(0, S - 1)
    row = (cy * S / h).floor().long().clamp(0, S - 1)
    return torch.stack([row, col], dim=1)


def _cell_origin(S: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(col, row)`` index grids ``[S, S, 1]`` that broadcast over ``[..., S, S, B]``."""
    idx = torch.arange(S, device=device, dtype=dtype)
    row, col = torch.meshgrid(idx, idx, indexing="ij")
    return col[..., None], row[..., None]


def _centres(
    params: Tensor, image_size: tuple[int, int], cells: Tensor | None, S: int | None
) -> tuple[Tensor, Tensor]:
    """Box centres ``(cx, cy)`` in pixels from the cell offsets ``params[..., :2]``, for a
    whole grid of parameters, or for gathered ones and their cells."""
    if cells is None:
        S = params.shape[-3]
        col, row = _cell_origin(S, params.device, params.dtype)
    elif S is None or cells.shape != (*params.shape[:-1], 2):
        raise ValueError("decoding gathered boxes needs S and cells [K, 2] (row, col) like params")
    else:
        col, row = cells[..., 1].to(params.dtype), cells[..., 0].to(params.dtype)
    h, w = image_size
    return (col + params[..., 0]) * (w / S), (row + params[..., 1]) * (h / S)


def _centre_size_to_xyxy(cx: Tensor, cy: Tensor, w: Tensor, h: Tensor) -> Tensor:
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def decode_v1(
    params: Tensor,
    image_size: tuple[int, int],
    *,
    cells: Tensor | None = None,
    S: int | None = None,
) -> Tensor:
    """v1 box parameters on the grid to boxes.

    Args:
        params: ``Tensor[..., S, S, B, 4]`` of ``(x, y, sqrt_w, sqrt_h)``; or, with
            ``cells``, ``Tensor[K, 4]`` gathered from an ``S x S`` grid (decode only those).
        image_size: ``(H, W)`` of the network input.
        cells: ``Tensor[K, 2]`` (row, col) of each gathered box.

    Returns:
        xyxy in pixels (width = ``sqrt_w ** 2 * W``), ``params``' shape.
    """
    cx, cy = _centres(params, image_size, cells, S)
    h, w = image_size
    return _centre_size_to_xyxy(cx, cy, params[..., 2] ** 2 * w, params[..., 3] ** 2 * h)


def encode_v1(boxes: Tensor, cells: Tensor, image_size: tuple[int, int], S: int) -> Tensor:
    """Boxes to v1 parameters relative to their cells (the inverse of :func:`decode_v1`).

    Args:
        boxes: ``Tensor[N, 4]`` xyxy pixels; ``cells``: ``Tensor[N, 2]`` (row, col).

    Returns:
        ``Tensor[N, 4]`` of ``(x, y, sqrt_w, sqrt_h)``.
    """
    h, w = image_size
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    x = cx * S / w - cells[:, 1].to(boxes.dtype)
    y = cy * S / h - cells[:, 0].to(boxes.dtype)
    return torch.stack([x, y, (bw / w).sqrt(), (bh / h).sqrt()], dim=1)


def decode_prior(
    params: Tensor,
    priors: Tensor,
    image_size: tuple[int, int],
    *,
    cells: Tensor | None = None,
    S: int | None = None,
) -> Tensor:
    """Anchor-prior box parameters to boxes (YOLO9000, Sec. 2, "Direct location prediction").

    Args:
        params: ``Tensor[..., S, S, B, 4]`` of ``(sx, sy, tw, th)``, ``sx, sy`` in ``[0, 1]``;
            or, with ``cells``, ``Tensor[K, 4]`` gathered from an ``S x S`` grid.
        priors: ``Tensor[B, 2]`` prior ``(w, h)`` in pixels of the network input (with
            ``cells``: ``Tensor[K, 2]``, the prior of each gathered box).
        cells: ``Tensor[K, 2]`` (row, col) of each gathered box.

    Returns:
        xyxy pixels, ``params``' shape: centre ``(col + sx) W / S``, width
        ``prior_w * exp(tw)``.
    """
    cx, cy = _centres(params, image_size, cells, S)
    # exp of a wild early prediction must not overflow to inf (inf boxes give NaN IoUs)
    bw = priors[:, 0] * params[..., 2].clamp(max=8.0).exp()
    bh = priors[:, 1] * params[..., 3].clamp(max=8.0).exp()
    return _centre_size_to_xyxy(cx, cy, bw, bh)


def encode_prior(
    boxes: Tensor, cells: Tensor, priors: Tensor, image_size: tuple[int, int], S: int
) -> Tensor:
    """Boxes to ``(sx, sy, tw, th)`` relative to their cells and priors ``Tensor[N, 2]``."""
    xy = encode_v1(boxes, cells, image_size, S)[:, :2]
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    return torch.cat(
        [xy, (bw / priors[:, 0]).log()[:, None], (bh / priors[:, 1]).log()[:, None]], 1
    )


def prior_iou(sizes: Tensor, priors: Tensor) -> Tensor:
    """IoU of boxes and priors sharing one centre, from their ``(w, h)``: ``Tensor[N, B]``
    (YOLO9000's dimension-cluster distance is ``1 - prior_iou``)."""
    inter = torch.minimum(sizes[:, None, 0], priors[None, :, 0]) * torch.minimum(
        sizes[:, None, 1], priors[None, :, 1]
    )
    union = sizes[:, None].prod(-1) + priors[None].prod(-1) - inter
    return inter / union.clamp(min=1e-9)


def kmeans_priors(sizes: Tensor, k: int, *, iters: int = 100, seed: int = 0) -> Tensor:
    """YOLO9000's dimension clusters: k-means on box ``(w, h)`` with distance ``1 - IoU``.

    Args:
        sizes: ``Tensor[N, 2]`` box widths and heights (pixels); ``k``: clusters (priors).

    Returns:
        ``Tensor[k, 2]`` priors sorted by area.
    """
    if len(sizes) < k:
        raise ValueError(f"need at least {k} boxes for {k} priors, got {len(sizes)}")
    g = torch.Generator().manual_seed(seed)
    sizes = sizes.float()
    centres = sizes[torch.randperm(len(sizes), generator=g)[:k]].clone()
    for _ in range(iters):
        nearest = prior_iou(sizes, centres).argmax(1)
        new = torch.stack(
            [sizes[nearest == j].mean(0) if (nearest == j).any() else centres[j] for j in range(k)]
        )
        if torch.equal(new, centres):
            break
        centres = new
    return centres[centres.prod(1).argsort()]


# --------------------------------------------------------------------- assignment


def pair_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching rows of two ``Tensor[..., 4]`` xyxy (0 for an empty union)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-9), torch.zeros_like(union))


def responsible_predictors(cells: Tensor, quality: Tensor) -> Tensor:
    """Which of its cell's B predictors is responsible for each object (YOLO v1 Sec. 2.2: the
    one with the highest IoU). Objects sharing a cell are served greedily, best IoU first,
    one per predictor; an object left without a free predictor is not learnt (Sec. 2.4).

    Args:
        cells: ``Tensor[M, 2]`` (row, col) of each object's cell.
        quality: ``Tensor[M, B]`` IoU of each of the cell's predictors with the object (v1:
            the predicted boxes; anchors: the priors).

    Returns:
        ``Tensor[M] int64``: the predictor index, or -1 for an object left out.
    """
    m, b = quality.shape
    choice = quality.argmax(1) if b else torch.full((m,), -1, dtype=torch.long)
    key = cells[:, 0] * (cells.max() + 1 if m else 1) + cells[:, 1]
    if m <= 1 or key.unique().numel() == m:  # every object alone in its cell
        return choice
    choice = torch.full((m,), -1, dtype=torch.long, device=cells.device)
    # pairs (object, predictor), best IoU first; ties: lower object index, lower predictor
    order = torch.argsort(-quality.flatten(), stable=True).tolist()
    taken: set[tuple[int, int]] = set()
    keys = key.tolist()
    for flat in order:
        obj, pred = divmod(flat, b)
        if choice[obj] < 0 and (keys[obj], pred) not in taken:
            choice[obj] = pred
            taken.add((keys[obj], pred))
    return choice


@dataclass
class GridTargets:
    """The objects of a batch placed on the grid (only the kept, responsible ones).

    Attributes:
        image, row, col, pred: ``Tensor[M] int64`` where each object lives.
        boxes: ``Tensor[M, 4]`` its xyxy box in input pixels; ``labels``: ``Tensor[M]`` 1..C.
    """

    image: Tensor
    row: Tensor
    col: Tensor
    pred: Tensor
    boxes: Tensor
    labels: Tensor


def assign(
    gt_boxes: list[Tensor],
    gt_labels: list[Tensor],
    pred_boxes: Tensor,
    image_size: tuple[int, int],
    priors: Tensor | None = None,
) -> GridTargets:
    """Place every object in its centre's cell and pick its responsible predictor.

    Args:
        gt_boxes: per image ``Tensor[n_i, 4]`` xyxy in input pixels; ``gt_labels`` 1..C.
        pred_boxes: ``Tensor[N, S, S, B, 4]`` decoded predictions (detached), used by v1.
        priors: ``Tensor[B, 2]`` (anchor option): match on prior shape instead (YOLO9000).
    """
    S = pred_boxes.shape[1]
    parts: list[list[Tensor]] = [[] for _ in range(6)]
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        if len(boxes) == 0:
            continue
        cells = cells_of(boxes, image_size, S)
        if priors is None:
            candidates = pred_boxes[i, cells[:, 0], cells[:, 1]]  # [n, B, 4]
            quality = pair_iou(candidates, boxes[:, None, :])
        else:
            quality = prior_iou(boxes[:, 2:] - boxes[:, :2], priors)
        pred = responsible_predictors(cells, quality)
        keep = pred >= 0
        for store, value in zip(
            parts,
            (torch.full_like(pred, i), cells[:, 0], cells[:, 1], pred, boxes, labels),
        ):
            store.append(value[keep])
    device = pred_boxes.device
    if not parts[0]:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return GridTargets(empty, empty, empty, empty, pred_boxes.new_zeros(0, 4), empty)
    return GridTargets(*(torch.cat(p) for p in parts))


# --------------------------------------------------------------------------- losses


def yolo_v1_loss(
    box_params: Tensor,
    confidence: Tensor,
    class_probs: Tensor,
    targets: GridTargets,
    image_size: tuple[int, int],
    config: YoloLossConfig,
) -> dict[str, Tensor]:
    """The sum-squared loss of YOLO v1 (Sec. 2.2, eq. 3), summed over the batch and divided
    by the number of images.

    Args:
        box_params: ``Tensor[N, S, S, B, 4]`` ``(x, y, sqrt_w, sqrt_h)`` (linear outputs).
        confidence: ``Tensor[N, S, S, B]``; target the predicted box's IoU (responsible), or 0.
        class_probs: ``Tensor[N, S, S, C]`` per cell, trained in cells holding an object (the
            mean of their one-hot vectors).
        targets: from :func:`assign`.

    Returns:
        ``loss_box_xy`` and ``loss_box_wh`` (times ``lambda_coord``), ``loss_objectness``,
        ``loss_noobject`` (times ``lambda_noobj``) and ``loss_classifier``.
    """
    n, S = box_params.shape[:2]
    C = class_probs.shape[-1]
    t = targets
    obj = torch.zeros_like(confidence, dtype=torch.bool)
    obj[t.image, t.row, t.col, t.pred] = True
    slot = (t.image, t.row, t.col, t.pred)
    pred_params = box_params[slot]  # [M, 4]
    cells = torch.stack([t.row, t.col], 1)
    target_params = encode_v1(t.boxes, cells, image_size, S)
    with torch.no_grad():
        iou = pair_iou(decode_v1(box_params.detach(), image_size)[slot], t.boxes)
    class_target = torch.zeros_like(class_probs)
    class_target.index_put_(
        (t.image, t.row, t.col), F.one_hot(t.labels - 1, C).to(class_probs.dtype), accumulate=True
    )
    has_obj = class_target.sum(-1) > 0  # [N, S, S]
    class_target = class_target / class_target.sum(-1, keepdim=True).clamp(min=1)
    lc, ln = config.lambda_coord, config.lambda_noobj
    return {
        "loss_box_xy": lc * (pred_params[:, :2] - target_params[:, :2]).pow(2).sum() / n,
        "loss_box_wh": lc * (pred_params[:, 2:] - target_params[:, 2:]).pow(2).sum() / n,
        "loss_objectness": (confidence[slot] - iou).pow(2).sum() / n,
        "loss_noobject": ln * confidence[~obj].pow(2).sum() / n,
        "loss_classifier": (class_probs[has_obj] - class_target[has_obj]).pow(2).sum() / n,
    }


def yolo_prior_loss(
    box_params: Tensor,
    objectness: Tensor,
    class_logits: Tensor,
    priors: Tensor,
    targets: GridTargets,
    image_size: tuple[int, int],
    config: YoloLossConfig,
) -> dict[str, Tensor]:
    """The anchor-prior variant (YOLO9000, Sec. 2): the same terms and weights, with per-box
    classes (softmax cross-entropy, as its reference code) and no "no object" push on
    predictions already overlapping an object by more than ``PRIOR_IGNORE_IOU``.

    Args:
        box_params: ``Tensor[N, S, S, B, 4]`` ``(sx, sy, tw, th)`` (``sx, sy`` after sigmoid).
        objectness: ``Tensor[N, S, S, B]`` after sigmoid; target IoU (responsible) or 0.
        class_logits: ``Tensor[N, S, S, B, C]``.
        priors: ``Tensor[B, 2]`` prior sizes in input pixels.
    """
    n, S = box_params.shape[:2]
    t = targets
    slot = (t.image, t.row, t.col, t.pred)
    obj = torch.zeros_like(objectness, dtype=torch.bool)
    obj[slot] = True
    cells = torch.stack([t.row, t.col], 1)
    target_params = encode_prior(t.boxes, cells, priors[t.pred], image_size, S)
    pred_params = box_params[slot]
    with torch.no_grad():
        decoded = decode_prior(box_params.detach(), priors, image_size)  # [N, S, S, B, 4]
        iou = pair_iou(decoded[slot], t.boxes)
        best = torch.zeros_like(objectness)
        for i in range(n):  # best IoU of every prediction with any object of its image
            boxes_i = t.boxes[t.image == i]
            if len(boxes_i):
                best[i] = box_iou(decoded[i].reshape(-1, 4), boxes_i).max(1).values.view_as(best[i])
    noobj = ~obj & (best <= PRIOR_IGNORE_IOU)
    lc, ln = config.lambda_coord, config.lambda_noobj
    return {
        "loss_box_xy": lc * (pred_params[:, :2] - target_params[:, :2]).pow(2).sum() / n,
        "loss_box_wh": lc * (pred_params[:, 2:] - target_params[:, 2:]).pow(2).sum() / n,
        "loss_objectness": (objectness[slot] - iou).pow(2).sum() / n,
        "loss_noobject": ln * objectness[noobj].pow(2).sum() / n,
        "loss_classifier": F.cross_entropy(class_logits[slot], t.labels - 1, reduction="sum") / n,
    }
