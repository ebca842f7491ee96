"""The pictures of ``visionlab bench lineage``: accuracy against speed, proposal recall
against the number of proposals, and the error breakdown per detector."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from visionlab.bench.lineage_report import ERRORS

COUNTS = (10, 20, 50, 100, 200, 500, 1000, 2000)
# Sliding windows: the dense baseline, sides 8-64 px, three shapes, on a 4 px grid.
WINDOW_SIZES, WINDOW_RATIOS, WINDOW_STRIDE = (8, 16, 32, 64), (0.5, 1.0, 2.0), 4


@torch.no_grad()
def proposal_recall_curves(
    dataset: Any, n_images: int, search: Any, faster: Any | None
) -> dict[str, Any]:
    """Recall at IoU 0.5 of the objects of the first ``n_images`` images with objects,
    against the number of proposals per image: selective search (fast, quality;
    ``search``'s size and cap), sliding windows (a seeded random subset of N: they have
    no order) and, with the trained Faster R-CNN ``faster``, its RPN."""
    from tqdm.auto import tqdm

    from visionlab.eval.proposals import proposal_recall
    from visionlab.ops import selective_search, sliding_windows

    n = min(n_images, len(dataset))
    if n == 0:
        return {}
    found: dict[str, list[torch.Tensor]] = {
        "selective search fast": [],
        "selective search quality": [],
        "sliding windows": [],
    }
    if faster is not None:
        found["RPN"] = []
    gts, generator = [], torch.Generator().manual_seed(0)
    with_objects = (i for i in range(len(dataset)) if len(dataset.records[i].boxes))
    for i in tqdm([next(with_objects, None) for _ in range(n)], desc="proposal recall"):
        if i is None:  # fewer images with objects than asked
            break
        image, target = dataset[i]
        gts.append(target["boxes"])
        for mode in ("fast", "quality"):
            found[f"selective search {mode}"].append(
                selective_search(image, mode, search.max_proposals, search_size=search.search_size)
            )
        windows = sliding_windows(
            tuple(image.shape[-2:]), WINDOW_SIZES, WINDOW_RATIOS, WINDOW_STRIDE
        )
        found["sliding windows"].append(windows[torch.randperm(len(windows), generator=generator)])
        if faster is not None:
            found["RPN"].append(faster([image], extras=("proposals",))[0]["proposals"])
    curves = {}
    for name, proposals in found.items():
        r = proposal_recall(proposals, gts, iou_thresholds=(0.5,), max_proposals=COUNTS)
        curves[name] = [r[f"R@{c}@0.5"] for c in COUNTS]
    n = len(gts)
    mean = {name: sum(len(p) for p in props) / max(1, n) for name, props in found.items()}
    return {"counts": list(COUNTS), "curves": curves, "mean_proposals": mean, "images": n}


def _figure(width: float = 6.4, height: float = 4.2) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def speed_plot(points: dict[str, tuple[float, float]], path: Path) -> Path:
    """AP50 against test ms/image (log scale), one labelled point per detector."""
    fig, ax = _figure()
    for name, (ms, ap50) in points.items():
        if math.isfinite(ms) and ms > 0 and math.isfinite(ap50):
            ax.scatter([ms], [ap50], s=36)
            ax.annotate(name, (ms, ap50), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("test ms/image (log scale, CPU, batch 1)")
    ax.set_ylabel("AP50 (COCO)")
    ax.set_title("Accuracy against speed")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def recall_plot(recall: dict[str, Any], path: Path) -> Path:
    """Recall at IoU 0.5 against proposals per image, one line per proposer."""
    fig, ax = _figure()
    for name, values in recall["curves"].items():
        ax.plot(recall["counts"], values, marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("proposals per image (log scale)")
    ax.set_ylabel("recall at IoU 0.5")
    ax.set_title(f"Proposal recall ({recall['images']} val images)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def errors_plot(shares: dict[str, list[float]], path: Path) -> Path:
    """One stacked bar per detector: the shares of its top detections in each of
    :data:`ERRORS` (the YOLO paper's Fig. 4 as bars)."""
    from visionlab.viz._common import color_for

    fig, ax = _figure(7.2, 0.9 + 0.42 * len(shares))
    names = list(shares)[::-1]  # the first detector on top
    left = [0.0] * len(names)
    for k, category in enumerate(ERRORS):
        widths = [100 * shares[name][k] for name in names]
        color = [c / 255 for c in color_for(k)]
        bars = ax.barh(names, widths, left=left, color=color, label=category)
        labels = [f"{w:.0f}" if w >= 6 else "" for w in widths]
        ax.bar_label(bars, labels=labels, label_type="center", fontsize=7)
        left = [a + w for a, w in zip(left, widths)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of each detector's top detections (%)")
    ax.set_title("Error breakdown (YOLO Sec. 4.2, after Hoiem et al.)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=len(ERRORS))
    return _save(fig, path)


def write_plots(record: dict[str, Any], out_dir: Path) -> list[Path]:
    """The three PNGs beside ``lineage.md``, from the run's record."""
    rows, peer = record["rows"], record["peer"]
    points = {r["name"]: (r["total"], r["metrics"]["AP50"]) for r in rows.values()}
    if peer.get("status") == "ok":
        points[f"Ultralytics {peer['model']}"] = (peer["total"], peer["metrics"]["AP50"])
    paths = [speed_plot(points, out_dir / "lineage_speed.png")]
    if record.get("recall"):
        paths.append(recall_plot(record["recall"], out_dir / "lineage_recall.png"))
    shares = {
        r["name"]: [r["errors"][k] / max(1, r["errors"]["detections"]) for k in ERRORS]
        for r in rows.values()
    }
    if peer.get("status") == "ok":
        errors = peer["errors"]
        shares[f"Ultralytics {peer['model']}"] = [
            errors[k] / max(1, errors["detections"]) for k in ERRORS
        ]
    paths.append(errors_plot(shares, out_dir / "lineage_errors.png"))
    return paths
