"""COCO evaluation benchmark: our vectorised engine against pycocotools on a synthetic set.

:func:`coco_eval_section` times both on the same synthetic ground truth and results (crowd
regions, empty images, duplicates, tied scores, more than 100 detections an image),
interleaved, and checks that the 12 stats agree. Used by ``visionlab bench ops``.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from typing import Any

import numpy as np

CATEGORY_IDS = (1, 2, 3, 5, 8, 13, 21)  # 21 never has ground truth
IMAGE_SIZES = ((480, 640), (640, 480), (375, 500), (512, 512))


def _polygon(x: float, y: float, w: float, h: float, rng: np.random.Generator) -> list[float]:
    """An 8-vertex polygon inside the box (x, y, w, h): a jittered ellipse."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
    r = rng.uniform(0.6, 1.0, 8)
    px = x + w / 2 + np.cos(angles) * r * w / 2
    py = y + h / 2 + np.sin(angles) * r * h / 2
    return np.stack([px, py], axis=1).round(2).ravel().tolist()


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE (column-major run lengths, zeros first) of a binary mask."""
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, edges, flat.size]).tolist()
    counts = [0, *runs] if flat[0] else runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _random_box(h: int, w: int, rng: np.random.Generator) -> list[float]:
    """A COCO box (x, y, w, h) inside the image, side log-uniform in [4, 0.8 * min(h, w)]."""
    bw, bh = np.exp(rng.uniform(np.log(4), np.log(0.8 * min(h, w)), 2))
    x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return [round(float(v), 2) for v in (x, y, bw, bh)]


def _detections(objects: list, h: int, w: int, rng: np.random.Generator) -> list:
    """Noisy copies of the objects (some missed, some twice, 10% with a wrong category),
    false positives (also of the category without ground truth) and, in 1% of the images,
    120 detections of one object (more than maxDets)."""
    dets = []
    for box, cat, poly in objects:
        for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
            jitter = rng.normal(0, 0.12, 4) * np.array([box[2], box[3], box[2], box[3]])
            b = [round(float(v), 2) for v in np.array(box) + jitter]
            b[2], b[3] = max(b[2], 0.5), max(b[3], 0.5)
            moved = (np.array(poly).reshape(-1, 2) + jitter[:2]).ravel().tolist()
            dets.append((b, cat if rng.random() < 0.9 else int(rng.choice(CATEGORY_IDS)), moved))
    for _ in range(int(rng.poisson(2))):
        b = _random_box(h, w, rng)
        dets.append((b, int(rng.choice(CATEGORY_IDS)), _polygon(*b, rng)))
    if objects and rng.random() < 0.01:
        box, cat, poly = objects[0]
        for _ in range(120):
            b = [round(float(v), 2) for v in np.array(box) + rng.normal(0, 3, 4)]
            b[2], b[3] = max(b[2], 0.5), max(b[3], 0.5)
            dets.append((b, cat, poly))
    return dets


def synthetic_coco(
    n_images: int, *, seed: int = 0, segm: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A synthetic COCO ground truth and results list.

    Args:
        n_images: number of images (about 1 in 8 has no annotation).
        seed: random seed.
        segm: add ``segmentation`` (polygons; uncompressed RLE for crowd regions) to the
            ground truth and compressed RLE masks to the results.

    Returns:
        ``(gt, dt)``: the ground-truth dict and the results list (COCO ``xywh`` boxes).
    """
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in CATEGORY_IDS]
    for img_id in range(1, n_images + 1):
        h, w = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
        images.append({"id": img_id, "height": int(h), "width": int(w)})
        objects = []  # (box, category, polygon) of this image's ground truth
        for _ in range(0 if rng.random() < 0.125 else int(rng.integers(1, 12))):
            box = _random_box(h, w, rng)
            cat = int(rng.choice(CATEGORY_IDS[:-1]))
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": cat, "bbox": box}
            ann["iscrowd"] = int(rng.random() < 0.04)
            ann["area"] = round(box[2] * box[3] * float(rng.uniform(0.5, 1.0)), 2)
            poly = _polygon(*box, rng)
            if segm and ann["iscrowd"]:
                with warnings.catch_warnings():  # pycocotools' decode vs numpy 2
                    warnings.simplefilter("ignore", DeprecationWarning)
                    mask = mask_utils.decode(mask_utils.frPyObjects([poly], h, w))[:, :, 0]
                ann["segmentation"] = _uncompressed_rle(mask)
            elif segm:
                ann["segmentation"] = [poly]
            anns.append(ann)
            objects.append((box, cat, poly))
        for box, cat, poly in _detections(objects, h, w, rng):
            det = {"image_id": img_id, "category_id": cat, "bbox": box}
            det["score"] = round(float(rng.beta(2, 2)), 2)  # 2 decimals: many tied scores
            if segm:
                rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
                det["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            results.append(det)
    gt = {"images": images, "annotations": anns, "categories": cats}
    return gt, results


def pycocotools_eval(gt: dict, dt: list[dict], iou_type: str = "bbox") -> Any:
    """Plain pycocotools on (gt, dt), its printing suppressed: the ``COCOeval`` after
    ``evaluate``, ``accumulate`` and ``summarize``. ``dt`` dicts are copied first, since
    ``loadRes`` writes into them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in dt])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def coco_eval_section(n_images: int = 5000, seed: int = 0, repeats: int = 3) -> str:
    """Markdown section: pycocotools vs our COCO evaluation (time ratio, equality of stats)."""
    from tqdm import tqdm

    from visionlab.eval.coco import STAT_KEYS, coco_evaluate

    gt, dt = synthetic_coco(n_images, seed=seed)
    times: dict[str, list[float]] = {"pycocotools": [], "visionlab": []}
    ref = ours = None
    for _ in tqdm(range(repeats), desc="coco eval: pycocotools vs visionlab", leave=False):
        # interleaved, so that both see the same machine load
        copies = [dict(d) for d in dt]
        t0 = time.perf_counter()
        ref = np.asarray(pycocotools_eval(gt, copies).stats)
        times["pycocotools"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = coco_evaluate(gt, dt, "bbox")
        times["visionlab"].append(time.perf_counter() - t0)
        ours = np.array([result[k] for k in STAT_KEYS])
    best = {k: min(v) for k, v in times.items()}
    max_diff = float(np.abs(ref - ours).max())
    n_crowd = sum(a["iscrowd"] for a in gt["annotations"])
    lines = [
        "## COCO evaluation: visionlab vs pycocotools",
        "",
        f"Synthetic set: {n_images} images, {len(gt['annotations'])} ground-truth boxes "
        f"({n_crowd} crowd), {len(dt)} detections, {len(CATEGORY_IDS)} categories "
        f"(one without ground truth), seed {seed}. bbox evaluation, best of {repeats} "
        "interleaved runs; pycocotools = COCO index + loadRes + evaluate + accumulate + "
        "summarize, visionlab = `coco_evaluate` (parsing and checks included).",
        "",
        "| engine | time (s) | speed-up |",
        "|---|---:|---:|",
        f"| pycocotools | {best['pycocotools']:.2f} | 1.0x |",
        f"| visionlab | {best['visionlab']:.2f} | {best['pycocotools'] / best['visionlab']:.1f}x |",
        "",
        f"All 12 stats equal: {'yes' if max_diff == 0 else 'NO'} (max abs difference "
        f"{max_diff:.3g}).",
        "",
        "| stat | pycocotools | visionlab |",
        "|---|---:|---:|",
        *(f"| {k} | {r:.6f} | {o:.6f} |" for k, r, o in zip(STAT_KEYS, ref, ours)),
        "",
    ]
    return "\n".join(lines)
