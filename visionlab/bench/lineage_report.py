"""What ``visionlab bench lineage`` concludes from its measurements: the speed-ups over
R-CNN, each paper's claim beside the measured figure with a verdict computed from the
numbers, and the Markdown of ``lineage.md``."""

from __future__ import annotations

import math
from typing import Any

from visionlab.bench.machine import row as md_row
from visionlab.eval.analysis import HOIEM_CATEGORIES
from visionlab.eval.coco_engine import STAT_KEYS

SPLIT = ("proposals", "features", "heads", "NMS")
AP_KEYS = STAT_KEYS[:6]  # AP, AP50, AP75 and by size
REPRODUCED, DIRECTION, NOT_REPRODUCED, NOT_MEASURED = (
    "reproduced",
    "direction reproduced, size not",
    "**not reproduced**",
    "not measured",
)


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _ratio(a: Any, b: Any) -> float:
    return a / b if _finite(a) and _finite(b) and b > 0 else math.nan


def _no_proposals(row: dict[str, Any]) -> float:
    """Test ms/image without the proposals step (what the SPPNet and Fast R-CNN papers time)."""
    proposals = row["parts"].get("proposals")
    return row["total"] - (proposals or 0.0)


def speedups(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per detector: R-CNN's time over its own at test (with and without proposals) and at
    training (NaN without an R-CNN row or a time)."""
    base = rows.get("rcnn")
    out = {}
    for key, r in rows.items():
        out[key] = {
            "test": _ratio(base["total"], r["total"]) if base else math.nan,
            "test_no_proposals": _ratio(_no_proposals(base), _no_proposals(r))
            if base
            else math.nan,
            "train": _ratio(base["train_s"], r["train_s"]) if base else math.nan,
        }
    return out


def ratio_verdict(measured: float, claimed: float) -> str:
    """A speed claim ("``claimed`` times faster") against the ``measured`` ratio."""
    if not _finite(measured):
        return NOT_MEASURED
    if measured >= claimed:
        return REPRODUCED
    return DIRECTION if measured > 1.0 else NOT_REPRODUCED


def gain_verdict(delta: float) -> str:
    """An accuracy claim ("X raises AP") against the measured difference."""
    if not _finite(delta):
        return NOT_MEASURED
    return REPRODUCED if delta > 0 else NOT_REPRODUCED


def _why_speed(rows: dict, measured: float, claimed: float, what: str) -> str:
    verdict = ratio_verdict(measured, claimed)
    if verdict in (REPRODUCED, NOT_MEASURED):
        return ""
    windows = rows.get("rcnn", rows.get("sppnet", {})).get("mean_proposals")
    n = f"{windows:.0f}" if _finite(windows) else "few"
    return (
        f"measured {measured:.1f}x against {claimed:.3g}x: {what} (here {n} windows per image, "
        "a tiny CNN on CPU; the papers ~2000 windows on ~500 px images, large nets on a GPU)"
    )


def claims(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each paper's claim, the measured figure and the verdict that figure gives."""
    s = speedups(rows)
    get = rows.get

    def speed(key: str, field: str = "test_no_proposals") -> float:
        return s[key][field] if key in s else math.nan

    def between(fast: str, slow: str, field: str = "total") -> float:
        if not (get(fast) and get(slow)):
            return math.nan
        a, b = get(slow), get(fast)
        if field == "total":
            return _ratio(a["total"], b["total"])
        if field == "no_proposals":
            return _ratio(_no_proposals(a), _no_proposals(b))
        return _ratio(a["parts"].get(field), b["parts"].get(field))

    out: list[dict[str, Any]] = []

    def add(claim: str, paper: str, measured: float, claimed: float, unit: str, why: str) -> None:
        verdict = ratio_verdict(measured, claimed) if unit == "x" else gain_verdict(measured)
        out.append(
            {
                "claim": claim,
                "paper": paper,
                "measured": measured,
                "unit": unit,
                "claimed": claimed,
                "verdict": verdict,
                "why": why if verdict not in (REPRODUCED, NOT_MEASURED) else "",
            }
        )

    m = speed("sppnet")
    add(
        "SPPNet is 24-102x faster than R-CNN at test time (proposals excluded)",
        "He et al. 2014, Table 6 (ECCV)",
        m,
        24.0,
        "x",
        _why_speed(
            rows,
            m,
            24.0,
            "R-CNN's cost grows with the windows, SPPNet's one conv "
            "pass does not, and with few small windows there is little to share",
        ),
    )
    m = speed("fast_rcnn")
    add(
        "Fast R-CNN is 213x faster than R-CNN at test time (proposals excluded)",
        "Girshick 2015, Table 4 (with truncated SVD)",
        m,
        213.0,
        "x",
        _why_speed(rows, m, 213.0, "the same reason as SPPNet's, and no truncated SVD here"),
    )
    m = between("fast_rcnn", "sppnet", "no_proposals")
    add(
        "Fast R-CNN is 10x faster than SPPNet at test time (proposals excluded)",
        "Girshick 2015, Table 4",
        m,
        10.0,
        "x",
        _why_speed(
            rows,
            m,
            10.0,
            "both run one conv pass per image; the paper's 10x comes "
            "from SPPNet's multi-scale pass and large fc layers on VGG16",
        ),
    )
    m = speed("fast_rcnn", "train")
    add(
        "Fast R-CNN trains 9x faster than R-CNN",
        "Girshick 2015, Table 4",
        m,
        9.0,
        "x",
        ""
        if ratio_verdict(m, 9.0) == REPRODUCED
        else f"measured {m:.1f}x: both trainings are capped by this run's schedules (steps, "
        "fine-tuning images), selective search is done once beforehand for both, and R-CNN "
        "caches no features on disk (the paper's R-CNN spent most of its 84 h writing them)",
    )
    m = between("faster_rcnn", "fast_rcnn", "proposals")
    ss = get("fast_rcnn", {}).get("parts", {}).get("proposals")
    rpn = get("faster_rcnn", {}).get("parts", {}).get("proposals")
    add(
        "The RPN proposes in ~10 ms where selective search takes ~2 s (200x)",
        "Ren et al. 2015, Table 5 / Sec. 4.1",
        m,
        200.0,
        "x",
        ""
        if ratio_verdict(m, 200.0) == REPRODUCED or not _finite(m)
        else f"measured selective search {ss:.0f} ms, the RPN {rpn:.1f} ms per image ({m:.0f}x): "
        "selective search runs here on small images (256 px search), the paper's on ~500 px "
        "PASCAL images, while the RPN's cost is set by the feature map",
    )
    m = between("yolo", "faster_rcnn")
    add(
        "YOLO runs at 45 fps against Faster R-CNN's 7 (6.4x)",
        "Redmon et al. 2016, Table 1",
        m,
        45 / 7,
        "x",
        _why_speed(
            rows,
            m,
            45 / 7,
            "our Faster R-CNN shares YOLO's tiny backbone, so only its "
            "RPN and RoI head are extra, not VGG16's fc layers over 300 regions",
        ),
    )
    for key, name in (("rcnn", "R-CNN"), ("sppnet", "SPPNet")):
        r = get(key, {})
        delta = r.get("AP50_box_reg", math.nan) - r.get("AP50_no_box_reg", math.nan)
        add(
            f"Box regression raises {name}'s mAP (AP50, with - without)",
            "Girshick et al. 2014, Table 2 (+3-4 mAP)",
            delta,
            0.0,
            "AP",
            f"AP50 {delta:+.3f}: the ridge regressors, trained on few regions in this run's "
            "schedule, do not improve the windows",
        )
    a, p = get("faster_rcnn"), get("faster_rcnn_roi_pool")
    delta = a["metrics"]["AP"] - p["metrics"]["AP"] if a and p else math.nan
    add(
        "RoI align raises AP over RoI pool (Faster R-CNN boxes, same seed and schedule)",
        "He et al. 2017 (Mask R-CNN), Tables 2c and 6",
        delta,
        0.0,
        "AP",
        f"AP {delta:+.3f}: at this schedule the quantisation RoI pool adds is not what limits "
        "the boxes",
    )
    return out


def _num(x: Any, digits: int = 3) -> str:
    if not _finite(x):
        return "-"
    return f"{x:.{digits}f}"


def _ap(x: Any) -> str:
    return "-" if not _finite(x) or x < 0 else f"{x:.3f}"


def markdown(record: dict[str, Any]) -> list[str]:
    """The lines of ``lineage.md`` from the run's record (every number from the record)."""
    st, rows, sp, peer = record["settings"], record["rows"], record["speedups"], record["peer"]
    quick = (
        f"**`--quick`**: a small rendered split ({st['val_images']} val images scored), at most "
        f"{st['max_steps']} steps per training: a smoke run of the whole report, not the "
        "figures of the recipes."
        if st["quick"]
        else "Full run: each recipe's own schedule unless overridden."
    )
    lines = [
        "# The detector lineage, measured: R-CNN to YOLO on one split",
        "",
        f"- Machine: {st['machine']}",
        f"- Command: `{st['command']}`",
        f"- {quick}",
        f"- Data: `{st['data']}` (train split to train, the first {st['val_images']} val images "
        f"to score); every model at {st['image_size']} px; backbone init "
        f"`{st['backbone_init']}` for every model; torch threads {st['threads']}; steps "
        f"{st['max_steps'] or 'recipe'}, epochs {st['epochs'] or 'recipe'}; R-CNN / SPPNet "
        f"fine-tuning images {st['finetune_images'] or 'recipe'}; overrides "
        f"`{st['overrides']}`; reused runs: `{st['reuse']}`.",
        f"- Selective search (fast mode, 256 px search, up to 2000 windows) over the training "
        f"images once before any training, shared by R-CNN, SPPNet and Fast R-CNN through "
        f"its disk cache (`$VISIONLAB_HOME/ss_cache`; images an earlier run searched cost a file "
        f"read): {_num(st['selective_search_once_s'], 1)} s (not in any training time).",
        "- One evaluator: `DetectionEvaluator` (COCO box AP, equal to pycocotools) on every "
        "model's predictions from `model([image])`; AP by size uses COCO's areas (small < "
        "32^2, large > 96^2 px).",
        f"- Test ms/image: batch 1, eval mode, no grad, mean over {st['timing_images']} val "
        "images; proposals = selective search uncached (R-CNN, SPPNet, Fast R-CNN) or the RPN; "
        "features = the conv pass (R-CNN: warping + CNN per window, SPPNet: pyramid pooling + "
        "fc); heads = classification + box regression; NMS = decoding + class-wise NMS. The "
        "total is the sum of the steps, each timed apart (`bench rcnn` / `bench peers` "
        "helpers); YOLO is one pass, timed whole; Mask R-CNN's split is its box path (the "
        "`bench peers` split), its mask head left out.",
        "",
        md_row(
            "detector",
            "AP",
            "AP50",
            "AP75",
            "APs",
            "APm",
            "APl",
            "train s",
            "steps",
            *(f"{k} ms" for k in SPLIT),
            "total ms/image",
            "test speed-up vs R-CNN",
            "train speed-up vs R-CNN",
        ),
        "|:--|" + "--:|" * 15,
    ]
    for key, r in rows.items():
        m = r["metrics"]
        parts = [
            _num(r["parts"].get(k), 1)
            if r["parts"].get(k) is not None
            else "one pass"
            if key.startswith("yolo")
            else "-"
            for k in SPLIT
        ]
        lines.append(
            md_row(
                r["name"],
                *(_ap(m.get(k)) for k in AP_KEYS),
                _num(r["train_s"], 0),
                r["steps"] if r["steps"] is not None else "-",
                *parts,
                _num(r["total"], 1),
                f"{_num(sp[key]['test'], 1)}x",
                f"{_num(sp[key]['train'], 1)}x",
            )
        )
    lines.append(peer_row(peer))
    lines += [
        "",
        "## Each paper's claim beside our figure",
        "",
        "The verdicts are computed from the measured values (a speed claim is reproduced when "
        "the measured ratio reaches the paper's, its direction when the ratio is above 1; an "
        "accuracy claim when the difference is above 0).",
        "",
        "| claim | paper | measured | verdict | why not |",
        "|:--|:--|--:|:--|:--|",
    ]
    for c in record["claims"]:
        value = f"{_num(c['measured'], 1)}x" if c["unit"] == "x" else f"{c['measured']:+.3f} AP"
        value = value if _finite(c["measured"]) else "-"
        lines.append(md_row(c["claim"], c["paper"], value, c["verdict"], c["why"] or ""))
    lines += [
        "",
        "## Pictures",
        "",
        "- `lineage_speed.png`: AP50 against test ms/image (log scale), one point per detector.",
        "- `lineage_recall.png`: recall at IoU 0.5 of the ground-truth objects against the "
        f"number of proposals per image ({st['recall_images']} val images): selective search "
        "fast and quality, sliding windows (a seeded random subset of N), the RPN.",
        "- `lineage_errors.png`: the error breakdown of YOLO's Sec. 4.2 (after Hoiem et al.): "
        "per class its top N detections (N = its objects), as correct, localisation, similar "
        "class, other, background (`visionlab.eval.analysis.error_breakdown`; scenes defines no "
        "similar-class groups, so every other class counts as similar).",
        "",
        "| detector | " + " | ".join(ERRORS) + " | detections |",
        "|:--|" + "--:|" * (len(ERRORS) + 1),
    ]
    named = list(rows.values())
    if peer.get("status") == "ok":
        named.append({"name": f"Ultralytics {peer['model']} (peer)", "errors": peer["errors"]})
    for r in named:
        e = r["errors"]
        n = max(1, e["detections"])
        lines.append(md_row(r["name"], *(f"{e[k] / n:.3f}" for k in ERRORS), e["detections"]))
    recall = record.get("recall") or {}
    if recall:
        counts = recall["counts"]
        lines += [
            "",
            "Recall at IoU 0.5 by proposals per image:",
            "",
            md_row("proposer", *counts),
            "|:--|" + "--:|" * len(counts),
        ]
        lines += [
            md_row(name, *(_num(v, 3) for v in values)) for name, values in recall["curves"].items()
        ]
    lines += ["", peer_note(peer), "", record["load"] + busy_note(record), ""]
    return lines


ERRORS = HOIEM_CATEGORIES


def busy_note(record: dict[str, Any]) -> str:
    """A warning when the load average passed the cores during the run ('' otherwise)."""
    load, cores = max(record.get("load_values") or [math.nan]), record.get("cores") or 0
    if not (_finite(load) and cores and load > cores):
        return ""
    return (
        f" The machine was busy (load {load:.1f} on {cores} cores, other jobs beside this "
        "one): every time above is inflated, and the models were timed one after another, "
        "so their ratios carry the load's drift."
    )


def peer_row(peer: dict[str, Any]) -> str:
    """The peer's table row: its numbers, or why there are none."""
    name = f"Ultralytics {peer.get('model', 'YOLO')} (peer)"
    if peer.get("status") != "ok":
        return md_row(name, peer.get("status", "not installed"), *([""] * 14))
    m = peer["metrics"]
    return md_row(
        name,
        *(_ap(m.get(k)) for k in AP_KEYS),
        _num(peer["train_s"], 0),
        f"{peer.get('epochs', '-')} epochs",
        "-",
        "-",
        "-",
        "-",
        _num(peer["total"], 1),
        f"{_num(peer.get('speedup_test'), 1)}x",
        f"{_num(peer.get('speedup_train'), 1)}x",
    )


def peer_note(peer: dict[str, Any]) -> str:
    """The sentence under the table that says how the peer was run."""
    if peer.get("status") != "ok":
        return f"Peer (Ultralytics YOLO): {peer.get('status')}. {peer.get('detail', '')}".strip()
    return (
        f"Peer: Ultralytics {peer['version']} `{peer['model']}` from its yaml (no pretrained "
        f"weights), in `.venv-peers` (`make peers`), run as a subprocess, offline "
        f"(`YOLO_OFFLINE=1`, `YOLO_AUTOINSTALL=0`, private `YOLO_CONFIG_DIR` with sync off, a "
        f"local TTF as its Arial.ttf); trained on the same split converted with `visionlab data "
        f"convert --to yolo`, at {peer['image_size']} px, with our YOLO v1's wall-clock budget "
        f"({_num(peer['budget_s'], 0)} s, its `time=` argument; it took "
        f"{_num(peer['train_s'], 0)} s, {peer.get('epochs', '?')} epochs); its predictions "
        "(conf >= 0.001) scored by our evaluator against our ground truth; ms/image: its "
        "`predict` at batch 1 on the CPU with the same threads, pre- and post-processing "
        "included."
    )
