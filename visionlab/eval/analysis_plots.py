"""The pictures and the ``analysis.json`` of ``visionlab eval --plots DIR``: precision/recall
curves, AP by object size, confusion matrices, the error breakdown and the worst images,
from an :class:`~visionlab.eval.analysis.AnalysisCollector` filled by one evaluation pass.

Plots are drawn with matplotlib's object API (no pyplot state, no display needed); the
worst images with :mod:`visionlab.viz`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionlab.eval.analysis import (
    HOIEM_CATEGORIES,
    SIZE_LABELS,
    AnalysisCollector,
    ap_by_size,
    detection_confusion,
    error_breakdown_arrays,
    evaluated,
    iou_index,
    pr_curves,
    worst_images,
    xyxy,
)

__all__ = ["write_analysis"]

PR_IOUS = (0.5, 0.75)
CONFUSION_IOU = 0.5
WORST_IMAGES = 6


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _color(k: int) -> tuple[float, float, float]:
    from visionlab.viz import color_for

    r, g, b = color_for(k)
    return r / 255, g / 255, b / 255


def plot_pr_curves(curves: dict[str, dict[str, dict]], path: Path, what: str) -> Path:
    """One panel per IoU threshold, one line per class, its AP in the legend."""
    fig = _figure(5.0 * len(curves), 4.6)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (iou, per_class) in zip(axes, curves.items()):
        for k, (name, c) in enumerate(per_class.items()):
            ax.step(
                c["recall"],
                c["precision"],
                where="post",
                color=_color(k),
                label=f"{name} AP={c['AP']:.3f}",
            )
        mean = np.mean([c["AP"] for c in per_class.values()]) if per_class else float("nan")
        ax.set_title(f"{what} IoU {iou}: mean AP {mean:.3f}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision (interpolated, COCO 101 points)")
        ax.set_xlim(0, 1.0)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        if per_class:
            ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def plot_matrix(
    matrix: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    normalise: bool = False,
) -> Path:
    """A confusion matrix as a heat map with the numbers written in the cells
    (``normalise``: each row divided by its sum, counts shown as fractions)."""
    values = matrix.astype(np.float64)
    if normalise:
        values = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    side = 1.6 + 0.55 * max(len(rows), len(columns))
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    top = values.max() if values.size else 0
    for (r, c), v in np.ndenumerate(values):
        if v:
            text = f"{v:.2f}" if normalise else f"{int(v)}"
            ax.text(
                c,
                r,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > top / 2 else "black",
            )
    ax.set_xticks(range(len(columns)), list(columns), rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_bars(values: dict[str, float], path: Path, *, title: str, ylabel: str) -> Path:
    """One bar per entry, value written above it (NaN: no bar)."""
    fig = _figure(1.6 + 0.6 * len(values), 4.0)
    ax = fig.subplots()
    heights = [0.0 if math.isnan(v) else v for v in values.values()]
    bars = ax.bar(range(len(values)), heights, color=[_color(k) for k in range(len(values))])
    labels = ["-" if math.isnan(v) else f"{v:.2f}" for v in values.values()]
    ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
    ax.set_xticks(range(len(values)), list(values), rotation=30, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_ap_by_size(sizes: dict[str, Any], path: Path, what: str) -> Path:
    """AP@[.5:.95] per size range: a bar per class (the colours of the PR curves) and the
    mean over classes (black outline); the ranges, object counts and area rule on the axes."""
    names = list(sizes["per_class"])
    fig = _figure(8.0, 4.4)
    ax = fig.subplots()
    width = 0.8 / (len(names) + 1)
    for g, size in enumerate(SIZE_LABELS):
        mean = sizes["all"][size]
        ax.bar(
            g,
            0.0 if math.isnan(mean) else mean,
            width=0.86,
            color="none",
            edgecolor="black",
            linewidth=1.2,
            label="mean over classes" if g == 0 else None,
        )
        if not math.isnan(mean):
            values = [mean, *(v[size] for v in sizes["per_class"].values())]
            top = max(v for v in values if not math.isnan(v))
            ax.text(g, top + 0.01, f"mean {mean:.2f}", ha="center", va="bottom", fontsize=7)
        for k, name in enumerate(names):
            v = sizes["per_class"][name][size]
            x = g + (k - (len(names) - 1) / 2) * width
            ax.bar(
                x,
                0.0 if math.isnan(v) else v,
                width=width * 0.9,
                color=_color(k),
                label=name if g == 0 else None,
            )
    ax.set_xticks(
        range(len(SIZE_LABELS)),
        [f"{s} ({sizes['objects'][s]} objects)\n{sizes['ranges'][s]}" for s in SIZE_LABELS],
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{what} AP@[.5:.95]")
    area = sizes["area"]
    ax.set_title(
        f"AP by object size; area: ground truth {area['ground truth']}, "
        f"detections {area['detections']}",
        fontsize=8,
    )
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def plot_error_breakdown(counts: dict[str, int], path: Path, *, title: str) -> Path:
    """Hoiem et al.'s categories as a pie, with counts and shares."""
    fig = _figure(5.6, 4.4)
    ax = fig.subplots()
    names = [n for n in HOIEM_CATEGORIES if counts[n]]
    total = sum(counts[n] for n in HOIEM_CATEGORIES)
    if total:
        colors = {n: _color(k) for k, n in enumerate(HOIEM_CATEGORIES)}
        ax.pie(
            [counts[n] for n in names],
            colors=[colors[n] for n in names],
            labels=[f"{n}\n{counts[n]} ({100 * counts[n] / total:.1f}%)" for n in names],
            startangle=90,
            counterclock=False,
            textprops={"fontsize": 8},
        )
    else:
        ax.text(0.5, 0.5, "no detections", ha="center", va="center")
        ax.axis("off")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _image_boxes(gt: Any, dt: Any, index: int, dt_keep: np.ndarray) -> tuple[dict, dict]:
    import torch

    g = np.flatnonzero(gt.image == index)
    d = np.flatnonzero((dt.image == index) & dt_keep)
    truth = {"boxes": xyxy(gt.boxes[g]), "labels": torch.as_tensor(gt.category[g] + 1)}
    preds = {
        "boxes": xyxy(dt.boxes[d]),
        "labels": torch.as_tensor(dt.category[d] + 1),
        "scores": torch.as_tensor(dt.scores[d]),
    }
    return truth, preds


def draw_worst(
    dataset: Any,
    gt: Any,
    dt: Any,
    worst: list[dict],
    classes: Sequence[str],
    out: Path,
    score_threshold: float,
) -> list[Path]:
    """Each worst image as one PNG: ground truth on the left, the detections scoring at least
    ``score_threshold`` on the right."""
    from visionlab.viz import draw_detections, image_grid

    paths = []
    keep = dt.scores >= score_threshold
    for rank, w in enumerate(worst, start=1):
        image = dataset[w["index"]][0]
        truth, preds = _image_boxes(gt, dt, w["index"], keep)
        left = draw_detections(image, truth["boxes"], truth["labels"], None, classes)
        right = draw_detections(image, preds["boxes"], preds["labels"], preds["scores"], classes)
        titles = [
            f"image {w['index']}: ground truth ({len(truth['boxes'])})",
            f"predicted >= {score_threshold:g}: {w['missed']} missed, {w['false']} false, "
            f"{w['confused']} confused",
        ]
        path = out / f"worst_{rank}.png"
        image_grid([left, right], cols=2, titles=titles).save(path)
        w["png"] = path.name
        paths.append(path)
    return paths


def _detection_analysis(
    collector: AnalysisCollector, dataset: Any, out: Path, score_threshold: float
) -> tuple[dict[str, Any], list[Path]]:
    assert collector.detections is not None
    classes = collector.classes
    iou_type = collector.detections.iou_type
    files: list[Path] = []
    results = evaluated(collector.detections)  # the metrics' own evaluation, not another
    gt, dt = results["arrays"]
    boxes = results["bbox"]
    # the curves and sizes of the numbers that rank the model: masks for instance models
    ranked = results.get("segm", boxes)
    what = "mask" if iou_type == "segm" else "box"
    curves = pr_curves(ranked, classes, PR_IOUS)
    files.append(plot_pr_curves(curves, out / "pr_curves.png", what))
    sizes = ap_by_size(ranked, gt, classes)
    dt_area = "mask area" if iou_type == "segm" else "box area (w * h)"
    sizes["area"] = {"ground truth": collector.gt_area, "detections": dt_area}
    files.append(plot_ap_by_size(sizes, out / "ap_by_size.png", what))

    match = boxes.dt_match[iou_index(CONFUSION_IOU)]
    confusion = detection_confusion(
        gt, dt, match, score_threshold=score_threshold, iou_threshold=CONFUSION_IOU
    )
    labels = [*classes, "background"]
    rule = (
        f"box IoU >= {CONFUSION_IOU} on detections scoring >= {score_threshold:g}: each "
        "detection first takes an object of its class (COCO matching), the rest take objects "
        "of another class; row background = a detection on no object (false positive), "
        "column background = an object no detection found (missed)"
    )
    files.append(
        plot_matrix(
            confusion.matrix,
            labels,
            labels,
            out / "confusion.png",
            title=f"detections >= {score_threshold:g}, IoU >= {CONFUSION_IOU}",
            xlabel="predicted",
            ylabel="ground truth",
        )
    )

    breakdown = error_breakdown_arrays(gt, dt, match, similar_groups=None)
    top_rule = (
        "top N detections of each class (N = its number of objects); correct: right class, "
        "IoU >= 0.5 (one detection per object); localization: right class, IoU > 0.1 "
        "(poor box or duplicate); similar: other class, IoU > 0.1 (the dataset defines no "
        "similar-class groups, so every other class counts as similar and 'other' is 0); "
        "background: IoU <= 0.1 with every object"
    )
    files.append(
        plot_error_breakdown(
            breakdown,
            out / "error_breakdown.png",
            title="error breakdown (Hoiem et al.; YOLO Sec. 4.2)",
        )
    )

    worst = worst_images(confusion, gt, dt, WORST_IMAGES)
    files += draw_worst(dataset, gt, dt, worst, classes, out, score_threshold)
    for w in worst:
        w["file"] = _file_name(dataset, w["index"])
    result = {
        "pr_curves": {"iou_type": iou_type, "curves": curves},
        "ap_by_size": sizes,
        "confusion": {
            "rule": rule,
            "rows": labels,
            "columns": labels,
            "matrix": confusion.matrix.tolist(),
        },
        "error_breakdown": {"rule": top_rule, "counts": breakdown},
        "worst_images": worst,
    }
    return result, files


def _file_name(dataset: Any, index: int) -> str | None:
    try:
        name = dataset.annotations(index).get("file_name")
    except (AttributeError, TypeError, IndexError):
        return None
    return str(name) if name is not None else None


def _class_confusion(
    cm: np.ndarray, names: Sequence[str], path: Path, what: str, files: list[Path]
) -> dict[str, Any]:
    """A square confusion matrix (rows: truth) drawn normalised by row, appended to
    ``files``; its counts as JSON."""
    files.append(
        plot_matrix(
            cm,
            names,
            names,
            path,
            title=f"{what}, each row divided by its sum",
            xlabel="predicted",
            ylabel="ground truth",
            normalise=True,
        )
    )
    return {
        "rows": list(names),
        "columns": list(names),
        "matrix": cm.tolist(),
        "png": f"{path.name}: each row divided by its sum",
    }


def write_analysis(
    collector: AnalysisCollector,
    dataset: Any,
    out: str | Path,
    *,
    metrics: dict[str, Any],
    score_threshold: float = 0.3,
    header: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the PNGs and ``analysis.json`` of one evaluation pass into ``out``.

    Args:
        collector: the evaluator wrapper the pass was run with.
        dataset: the evaluated dataset, as the model saw it (image ``k`` = the ``k``-th
            evaluated).
        metrics: what the pass returned (segmentation: its per-class IoU).
        score_threshold: detections below it are left out of the confusion matrix and the
            worst images.
        header: checkpoint, data, split ... written at the top of ``analysis.json``.

    Returns:
        The files written, ``analysis.json`` last.
    """
    from visionlab.engine.common import write_eval_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = dict(header or {})
    files: list[Path] = []
    if collector.detections is not None:
        result, files = _detection_analysis(collector, dataset, out, score_threshold)
        payload.update(result)
    elif collector.task == "segmentation":
        per_class = dict(metrics["per_class"])
        title = f"IoU per class (mIoU {metrics['mIoU']:.3f})"
        files.append(plot_bars(per_class, out / "iou_per_class.png", ylabel="IoU", title=title))
        ev = collector.evaluator
        payload["iou_per_class"] = per_class
        payload["confusion"] = _class_confusion(
            ev.confusion.numpy(), ev.class_names, out / "confusion.png", "pixels", files
        )
    elif collector.task == "classification":
        payload["confusion"] = _class_confusion(
            collector.class_confusion.numpy(), collector.classes, out / "confusion.png",
            "images (top-1 class)", files,
        )  # fmt: skip
    payload["files"] = [p.name for p in files]
    files.append(write_eval_json(out / "analysis.json", payload))
    return files
