"""The COCO evaluation engine: ground truth and detections as flat arrays in, pycocotools'
precision [T, R, K, A, M] / recall [T, K, A, M] tables and the 12 summary numbers out.

Vectorised in numpy and numerically equal to pycocotools' ``COCOeval`` (see
:mod:`visionlab.eval.coco` for the rules and the quirks kept): the IoUs of every (detection,
ground truth) pair of an image and category in one pass; the greedy matching for all images,
area ranges and IoU thresholds at once, one loop step per detection rank that has a
candidate; the precision/recall accumulation per category with integer searches.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# Built exactly as pycocotools builds them (linspace, not arange: same floats).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
AREA_LABELS = ("all", "small", "medium", "large")
AREA_RANGES = np.array([[0.0, 1e5**2], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e5**2]])
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
STAT_KEYS += ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoGroundTruth:
    """Ground truth as flat arrays, one row per annotation (boxes are COCO ``(x, y, w, h)``).

    ``image`` / ``category`` index ``image_ids`` / ``category_ids`` (each sorted, as
    pycocotools sorts them). ``ignore`` is what the matching ignores (crowd; a caller may add
    ``difficult``); ``zero_id`` marks annotation id 0, which pycocotools never counts as a
    match; ``difficult`` is read by the VOC metric only. ``rles``: one COCO RLE per row
    (``segm``).
    """

    image_ids: list[Any]
    category_ids: list[Any]
    category_names: list[str]
    image: np.ndarray  # [G] int64
    category: np.ndarray  # [G] int64
    boxes: np.ndarray  # [G, 4] float64 (x, y, w, h)
    area: np.ndarray  # [G] float64
    iscrowd: np.ndarray  # [G] bool
    ignore: np.ndarray  # [G] bool
    zero_id: np.ndarray  # [G] bool
    difficult: np.ndarray  # [G] bool
    rles: list[dict] | None = None
    image_sizes: list[tuple[int | None, int | None]] | None = None  # (H, W) per image


@dataclass
class CocoDetections:
    """Detections as flat arrays, one row per result (boxes are COCO ``(x, y, w, h)``)."""

    image: np.ndarray  # [D] int64 index into CocoGroundTruth.image_ids
    category: np.ndarray  # [D] int64 index into CocoGroundTruth.category_ids
    boxes: np.ndarray  # [D, 4] float64
    area: np.ndarray  # [D] float64
    scores: np.ndarray  # [D] float64
    rles: list[dict] | None = field(default=None)


@dataclass
class CocoEvalResult:
    """pycocotools' ``eval['precision']`` ``[T, R, K, A, M]`` and ``eval['recall']``
    ``[T, K, A, M]`` (-1 where a category/area has no ground truth), and the summaries.

    ``dt_match`` ``[T, D]``: for each detection (in the order given) and IoU threshold, the
    row of the ground truth it matched in area range "all" (-1: unmatched, or cut by the
    100 detections per image and category); a match may be an ignored (crowd) ground truth.
    """

    precision: np.ndarray
    recall: np.ndarray
    stats: dict[str, float]
    per_class: dict[str, float]
    dt_match: np.ndarray | None = None


def pair_index(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows i with ranges [starts[i], starts[i] + counts[i]): (row of each pair, item)."""
    total = int(counts.sum())
    rows = np.repeat(np.arange(len(counts)), counts)
    offsets = np.cumsum(counts) - counts
    return rows, np.arange(total) - offsets[rows] + starts[rows]


def _bbox_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired COCO boxes ``[P, 4]`` with pycocotools' float operations (``bbIou``)."""
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    ok = (w > 0) & (h > 0)
    inter = w[ok] * h[ok]
    da = d[ok, 2] * d[ok, 3]
    union = np.where(crowd[ok], da, da + g[ok, 2] * g[ok, 3] - inter)
    iou = np.zeros(len(d))
    iou[ok] = inter / union
    return iou


def _segm_iou(gt: CocoGroundTruth, d_rles: list[dict], pair_dt, pair_gt) -> np.ndarray:
    """Mask IoUs of the pairs, one pycocotools ``iou`` call per (image, category) block."""
    from pycocotools import mask as mask_utils

    iou = np.zeros(len(pair_dt))
    if not len(pair_dt):
        return iou
    # pairs come in blocks: consecutive detections of a group x that group's gts, row-major
    key = gt.image[pair_gt] * len(gt.category_ids) + gt.category[pair_gt]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]
    for s, e in zip(starts.tolist(), ends.tolist()):
        dts = np.unique(pair_dt[s:e])
        gts = np.unique(pair_gt[s:e])
        ious = mask_utils.iou(
            [d_rles[i] for i in dts], [gt.rles[j] for j in gts], gt.iscrowd[gts].astype(np.uint8)
        )
        iou[s:e] = np.asarray(ious).ravel()
    return iou


def _match(dt_key, pair_dt, pair_gt, pair_iou, gt_ig, gt: CocoGroundTruth, n_dt: int):
    """Greedy matching of pycocotools ``evaluateImg`` for every area range and IoU threshold.

    Detections are indexed in (group, score) order, so each group's detections are
    consecutive and pairs come ordered by (detection, gt). Returns ``matched`` (a match that
    counts: gt id != 0) and ``matched_ignored`` (matched to an ignored gt), both ``[A, T, D]``,
    and ``matched_gt`` ``[T, D]``: the gt each detection took in area range "all" (-1: none).
    """
    n_area, n_thr = gt_ig.shape[0], len(IOU_THRESHOLDS)
    thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    matched = np.zeros((n_area, n_thr, n_dt), dtype=bool)
    matched_ignored = np.zeros((n_area, n_thr, n_dt), dtype=bool)
    matched_gt = np.full((n_thr, n_dt), -1, dtype=np.int64)
    keep = pair_iou >= thr.min()
    pair_dt, pair_gt, pair_iou = pair_dt[keep], pair_gt[keep], pair_iou[keep]
    if not len(pair_dt):
        return matched, matched_ignored, matched_gt
    # step = rank of a detection among its group's detections that have a candidate
    cand_dt = np.unique(pair_dt)
    run_key = dt_key[cand_dt]
    run_first = np.flatnonzero(np.r_[True, run_key[1:] != run_key[:-1]])
    run_id = np.cumsum(np.r_[True, run_key[1:] != run_key[:-1]]) - 1
    step_of_dt = np.arange(len(cand_dt)) - run_first[run_id]
    pair_step = step_of_dt[np.searchsorted(cand_dt, pair_dt)]
    order = np.argsort(pair_step, kind="stable")
    pair_dt, pair_gt, pair_iou = pair_dt[order], pair_gt[order], pair_iou[order]
    bounds = np.searchsorted(pair_step[order], np.arange(step_of_dt.max() + 2))
    crowd = gt.iscrowd
    taken = np.zeros((n_area, n_thr, len(crowd)), dtype=bool)
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        pd, pg, pi = pair_dt[lo:hi], pair_gt[lo:hi], pair_iou[lo:hi]
        seg = np.flatnonzero(np.r_[True, pd[1:] != pd[:-1]])
        seg_of = np.repeat(np.arange(len(seg)), np.diff(np.r_[seg, len(pd)]))
        ig = gt_ig[:, pg][:, None, :]  # [A, 1, P]
        cand = (pi >= thr[:, None])[None] & (~taken[:, :, pg] | crowd[pg])  # [A, T, P]
        # a gt that is not ignored beats any ignored one; then the highest IoU; ties: last gt
        pref = cand & ~ig
        has_pref = np.logical_or.reduceat(pref, seg, axis=2)[:, :, seg_of]
        eff = np.where(has_pref, pref, cand)
        val = np.where(eff, pi, -1.0)
        best = eff & (val == np.maximum.reduceat(val, seg, axis=2)[:, :, seg_of])
        pick = np.maximum.reduceat(np.where(best, np.arange(len(pd)), -1), seg, axis=2)
        a, t, s = np.nonzero(pick >= 0)
        p = pick[a, t, s]
        g, d = pg[p], pd[p]
        matched[a, t, d] = ~gt.zero_id[g]
        matched_ignored[a, t, d] = gt_ig[a, g]
        whole = a == 0
        matched_gt[t[whole], d[whole]] = g[whole]
        once = ~crowd[g]
        taken[a[once], t[once], g[once]] = True
    return matched, matched_ignored, matched_gt


def _accumulate(gt_cat, gt_ig, dt_cat, dt_img, dt_rank, dt_score, tps, fps, n_cat: int):
    """pycocotools ``accumulate``: precision ``[T, R, K, A, M]`` and recall ``[T, K, A, M]``."""
    n_area, n_thr, n_rec = gt_ig.shape[0], len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = -np.ones((n_thr, n_rec, n_cat, n_area, len(MAX_DETS)))
    recall = -np.ones((n_thr, n_cat, n_area, len(MAX_DETS)))
    npig = np.stack([np.bincount(gt_cat[~gt_ig[a]], minlength=n_cat) for a in range(n_area)])
    # pycocotools concatenates images in id order, each by rank, then sorts by score (stable)
    order = np.lexsort((dt_rank, dt_img, -dt_score, dt_cat))
    for m, max_det in enumerate(MAX_DETS):
        idx = order[dt_rank[order] < max_det]
        bounds = np.searchsorted(dt_cat[idx], np.arange(n_cat + 1))
        for k in range(n_cat):
            areas = np.flatnonzero(npig[:, k] > 0)
            if not len(areas):
                continue
            sel = idx[bounds[k] : bounds[k + 1]]
            n = len(sel)
            npos = npig[areas, k]
            if n == 0:
                precision[:, :, k, areas, m] = 0.0
                recall[:, k, areas, m] = 0.0
                continue
            tp_int = np.cumsum(tps[:, :, sel][areas], axis=2)  # [A', T, n]
            tp = tp_int.astype(float)
            fp = np.cumsum(fps[:, :, sel][areas], axis=2).astype(float)
            pr = tp / (fp + tp + np.spacing(1))
            envelope = np.maximum.accumulate(pr[:, :, ::-1], axis=2)[:, :, ::-1]
            recall[:, k, areas, m] = (tp[:, :, -1] / npos[:, None]).T
            # recall = tp / npos: "first recall >= r" is "first tp >= c_r", with c_r found on
            # the same float divisions, so integer rows can be searched in one flat call
            width = int(npos.max()) + 1
            cuts = np.stack(
                [np.searchsorted(np.arange(p + 1) / p, RECALL_THRESHOLDS) for p in npos.tolist()]
            )  # [A', R]
            rows = np.arange(len(areas) * n_thr).reshape(len(areas), n_thr)
            flat = (tp_int + (rows * width)[:, :, None]).ravel()
            queries = cuts[:, None, :] + (rows * width)[:, :, None]  # [A', T, R]
            inds = np.searchsorted(flat, queries, side="left") - (rows * n)[:, :, None]
            q = np.take_along_axis(envelope, np.minimum(inds, n - 1), axis=2)
            q[inds >= n] = 0.0
            precision[:, :, k, areas, m] = q.transpose(1, 2, 0)
    return precision, recall


def _summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """pycocotools ``summarize`` (same indexing and means, so the same floats)."""

    def one(ap: bool, iou_thr: float | None = None, area: str = "all", max_dets: int = 100):
        aind = [i for i, a in enumerate(AREA_LABELS) if a == area]
        mind = [i for i, m in enumerate(MAX_DETS) if m == max_dets]
        s = precision if ap else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == IOU_THRESHOLDS)[0]]
        s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    values = [
        one(True),
        one(True, iou_thr=0.5),
        one(True, iou_thr=0.75),
        one(True, area="small"),
        one(True, area="medium"),
        one(True, area="large"),
        one(False, max_dets=1),
        one(False, max_dets=10),
        one(False),
        one(False, area="small"),
        one(False, area="medium"),
        one(False, area="large"),
    ]
    return dict(zip(STAT_KEYS, values))


def evaluate_arrays(gt: CocoGroundTruth, dt: CocoDetections, iou_type: str) -> CocoEvalResult:
    """Run the COCO evaluation on arrays (see :mod:`visionlab.eval.coco` for the rules).

    Returns the precision/recall tables, the 12 stats (``STAT_KEYS``) and ``per_class``:
    category name -> AP@[.5:.95] (area all, 100 detections) as detectron2 reports it, NaN
    for a category without ground truth (it is left out of every mean, as in pycocotools).
    """
    n_img, n_cat = len(gt.image_ids), len(gt.category_ids)
    # ground truth grouped by (category, image), file order kept inside a group
    g_key = gt.category * n_img + gt.image
    g_order = np.argsort(g_key, kind="stable")
    g_key = g_key[g_order]
    per_row = ("image", "category", "boxes", "area", "iscrowd", "ignore", "zero_id", "difficult")
    gts = replace(gt, **{f: getattr(gt, f)[g_order] for f in per_row})
    if gt.rles is not None:
        gts.rles = [gt.rles[i] for i in g_order]
    # detections by (category, image), highest score first (stable), cut to maxDets[-1]
    d_key = dt.category * n_img + dt.image
    d_order = np.lexsort((-dt.scores, d_key))
    d_key = d_key[d_order]
    first = np.searchsorted(d_key, d_key, side="left")
    rank = np.arange(len(d_key)) - first
    kept = rank < MAX_DETS[-1]
    d_order, d_key, rank = d_order[kept], d_key[kept], rank[kept]
    d_boxes, d_area = dt.boxes[d_order], dt.area[d_order]

    starts = np.searchsorted(g_key, d_key, side="left")
    counts = np.searchsorted(g_key, d_key, side="right") - starts
    pair_dt, pair_gt = pair_index(starts, counts)
    if iou_type == "segm":
        d_rles = [dt.rles[i] for i in d_order]
        pair_iou = _segm_iou(gts, d_rles, pair_dt, pair_gt)
    else:
        pair_iou = _bbox_iou(d_boxes[pair_dt], gts.boxes[pair_gt], gts.iscrowd[pair_gt])

    lo, hi = AREA_RANGES[:, :1], AREA_RANGES[:, 1:]
    gt_ig = gts.ignore[None] | (gts.area[None] < lo) | (gts.area[None] > hi)  # [A, G]
    dt_out = (d_area[None] < lo) | (d_area[None] > hi)  # [A, D]
    matched, matched_ignored, matched_gt = _match(
        d_key, pair_dt, pair_gt, pair_iou, gt_ig, gts, len(d_key)
    )
    dt_ig = matched_ignored | (~matched & dt_out[:, None, :])
    tps, fps = matched & ~dt_ig, ~matched & ~dt_ig

    precision, recall = _accumulate(
        gts.category, gt_ig, dt.category[d_order], dt.image[d_order], rank,
        dt.scores[d_order], tps, fps, n_cat,
    )  # fmt: skip
    per_class = {}
    for k, name in enumerate(gt.category_names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[name] = float(np.mean(p)) if p.size else float("nan")
    dt_match = np.full((len(IOU_THRESHOLDS), len(dt.scores)), -1, dtype=np.int64)
    found = matched_gt >= 0
    dt_match[:, d_order] = np.where(found, g_order[np.maximum(matched_gt, 0)], -1)
    return CocoEvalResult(precision, recall, _summarize(precision, recall), per_class, dt_match)
