"""Ops against torchvision: box IoU, NMS, anchors, box coding, matching, RoI pooling; COCO eval.

Times each op against its torchvision peer on the same inputs (interleaved, medians), checks
that the outputs agree, times the peerless ops, and appends :mod:`visionlab.bench.coco_eval`'s
section. Writes ``OUT_DIR/ops.md``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from visionlab.bench.machine import header, load_average, row, write_markdown
from visionlab.errors import VisionLabError


@dataclass
class Case:
    """One op compared with its torchvision peer; both callables take no argument."""

    name: str
    size: str
    ours: Callable[[], Any]
    theirs: Callable[[], Any]
    note: str = ""  # why ours cannot beat theirs, where that is known


WRAPPER = "a thin wrapper: argument checks, then the same torchvision kernel"


@dataclass
class Solo:
    """One op without a torchvision peer, timed alone."""

    name: str
    size: str
    ours: Callable[[], Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=15, help="timed samples per op (median)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: ratios stay stable when other jobs share the CPU)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--coco-images", type=int, default=5000, help="images in the COCO-evaluation comparison"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")


def _random_boxes(n: int, extent: float, device: torch.device, gen: torch.Generator) -> Tensor:
    """``Tensor[n, 4]`` xyxy boxes with corners in ``[0, extent]`` and sides of 1..extent/4."""
    xy = torch.rand(n, 2, generator=gen) * extent * 0.8
    wh = torch.rand(n, 2, generator=gen) * extent / 4 + 1
    return torch.cat([xy, xy + wh], dim=1).to(device)


def _flatten(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [t for o in out for t in _flatten(o)]
    raise TypeError(f"cannot compare {type(out).__name__}")


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two (nested lists of) tensors; inf if shapes differ."""
    ta, tb = _flatten(a), _flatten(b)
    if len(ta) != len(tb):
        return math.inf
    worst = 0.0
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            return math.inf
        if x.numel():
            worst = max(worst, float((x.double() - y.double()).abs().max()))
    return worst


def _timer(device: torch.device) -> Callable[[Callable[[], Any], int], float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def measure(fn: Callable[[], Any], inner: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        return (time.perf_counter() - start) / inner

    return measure


def _calls_per_sample(measure: Callable[[Callable[[], Any], int], float], *fns: Any) -> int:
    """Calls per timed sample so that a sample lasts about 20 ms (1 to 1000)."""
    once = max(*(measure(fn, 1) for fn in fns), 1e-6)
    return max(1, min(1000, int(0.02 / once)))


def time_cases(
    cases: list[Case], repeats: int, device: torch.device, progress: bool = True
) -> list[dict[str, Any]]:
    """Median seconds of ours and theirs per case, samples interleaved, plus max abs diff."""
    from tqdm import tqdm

    measure = _timer(device)
    rows = []
    for case in tqdm(cases, desc="ops vs torchvision", disable=not progress):
        diff = max_abs_diff(case.ours(), case.theirs())  # also the warm-up
        inner = _calls_per_sample(measure, case.ours, case.theirs)
        ours, theirs = [], []
        for r in range(repeats):
            pair = [(case.ours, ours), (case.theirs, theirs)]
            for fn, samples in pair if r % 2 == 0 else pair[::-1]:
                samples.append(measure(fn, inner))
        t = {"ours": statistics.median(ours), "theirs": statistics.median(theirs)}
        rows.append({**vars(case), **t, "ratio": t["ours"] / t["theirs"], "diff": diff})
    return rows


def time_solos(solos: list[Solo], repeats: int, device: torch.device) -> list[dict[str, Any]]:
    measure = _timer(device)
    rows = []
    for solo in solos:
        solo.ours()  # warm-up
        inner = _calls_per_sample(measure, solo.ours)
        samples = [measure(solo.ours, inner) for _ in range(max(3, repeats // 3))]
        rows.append({"name": solo.name, "size": solo.size, "ours": statistics.median(samples)})
    return rows


def _scene_image(height: int, width: int, gen: torch.Generator) -> Tensor:
    """A ``[3, H, W]`` float image of coloured rectangles on a gradient, for selective search."""
    ys = torch.linspace(0, 1, height)[:, None].expand(height, width)
    image = torch.stack([ys * 0.5, ys * 0.3 + 0.2, 1 - ys * 0.5])
    for _ in range(8):
        h = int(torch.randint(height // 8, height // 2, (1,), generator=gen))
        w = int(torch.randint(width // 8, width // 2, (1,), generator=gen))
        y = int(torch.randint(0, height - h, (1,), generator=gen))
        x = int(torch.randint(0, width - w, (1,), generator=gen))
        image[:, y : y + h, x : x + w] = torch.rand(3, 1, 1, generator=gen)
    return (image + 0.03 * torch.rand(image.shape, generator=gen)).clamp(0, 1)


def build_cases(device: torch.device, quick: bool) -> tuple[list[Case], list[Solo]]:
    """The comparisons (and the peerless ops) at full or smoke-test sizes."""
    import torchvision
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    from visionlab import ops
    from visionlab.ops.proposals import selective_search

    tvo = torchvision.ops
    gen = torch.Generator().manual_seed(0)
    n_iou, n_nms, n_code, n_elem = (
        (200, 500, 1000, 1000) if quick else (2000, 10000, 100000, 100000)
    )
    img = 128 if quick else 800
    n_gt, n_anchor = (5, 500) if quick else (20, 20000)
    fmap, n_rois, chans = (16, 16, 8) if quick else (50, 512, 256)

    a, b = _random_boxes(n_iou, 800, device, gen), _random_boxes(n_iou, 800, device, gen)
    many = _random_boxes(n_elem, 800, device, gen)
    cxcywh = tvo.box_convert(many, "xyxy", "cxcywh")
    nms_boxes = _random_boxes(n_nms, 800, device, gen)
    nms_scores = torch.rand(n_nms, generator=gen).to(device)
    nms_classes = torch.randint(0, 80, (n_nms,), generator=gen).to(device)

    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    ours_ag = ops.AnchorGenerator(sizes, ratios)
    ours_ag_off = ops.AnchorGenerator(sizes, ratios, cache=False)
    tv_ag = TVAnchorGenerator(sizes, ratios)
    strides = (4, 8, 16, 32, 64)
    feats = [torch.zeros(1, 1, img // s, img // s, device=device) for s in strides]
    grid = [tuple(f.shape[-2:]) for f in feats]
    image_list = ImageList(torch.zeros(1, 3, img, img, device=device), [(img, img)])

    def ours_anchors(gen_: ops.AnchorGenerator) -> Tensor:
        return torch.cat(gen_((img, img), grid, device=device))

    def tv_anchors() -> Tensor:
        return tv_ag(image_list, feats)[0]

    gt_boxes = _random_boxes(n_code, 800, device, gen)
    proposals = _random_boxes(n_code, 800, device, gen)
    weights = (10.0, 10.0, 5.0, 5.0)
    coder, tv_coder = ops.BoxCoder(weights), det_utils.BoxCoder(weights)

    anchors = _random_boxes(n_anchor, 800, device, gen)
    # every gt overlaps some anchor: where one overlaps none, torchvision's low-quality rule
    # turns every zero-overlap anchor into a match and ours (deliberately) does not
    iou = tvo.box_iou(_random_boxes(n_gt, 800, device, gen), anchors)
    matcher, tv_matcher = ops.Matcher(0.7, 0.3, True), det_utils.Matcher(0.7, 0.3, True)

    features = torch.randn(2, chans, fmap, fmap, generator=gen).to(device)
    rois_xyxy = _random_boxes(n_rois, fmap * 16, device, gen)
    rois = torch.cat([torch.randint(0, 2, (n_rois, 1), generator=gen).to(rois_xyxy), rois_xyxy], 1)

    def same(op: str, size: str, args: tuple, note: str = "", name: str = "") -> Case:
        """``op`` of both libraries on the same arguments."""
        ours, theirs = partial(getattr(ops, op), *args), partial(getattr(tvo, op), *args)
        return Case(name or op, size, ours, theirs, note)

    iou_size, boxes = f"{n_iou}x{n_iou}", f"{n_elem} boxes"
    anchors_on = f"{img}x{img}, 5 levels x 3 ratios"
    rois_on = f"{n_rois} RoIs on [2,{chans},{fmap},{fmap}]"
    nms_in, roi_in = (nms_boxes, nms_scores), (features, rois, 7, 1 / 16)
    cases = [
        same("box_iou", iou_size, (a, b)),
        same("generalized_box_iou", iou_size, (a, b)),
        same("box_convert", boxes, (cxcywh, "cxcywh", "xyxy"), name="box_convert cxcywh->xyxy"),
        same("clip_boxes_to_image", boxes, (many, (600, 600))),
        same("remove_small_boxes", boxes, (many, 20.0)),
        same("nms", f"{n_nms} boxes", (*nms_in, 0.5), WRAPPER),
        same("batched_nms", f"{n_nms} boxes, 80 classes", (*nms_in, nms_classes, 0.5), WRAPPER),
        Case("AnchorGenerator (cached)", anchors_on, partial(ours_anchors, ours_ag), tv_anchors),
        Case(
            "AnchorGenerator (cache off)",
            anchors_on,
            partial(ours_anchors, ours_ag_off),
            tv_anchors,
        ),
        Case(
            "BoxCoder encode+decode",
            f"{n_code} boxes",
            lambda: coder.decode(coder.encode(gt_boxes, proposals), proposals),
            lambda: tv_coder.decode_single(tv_coder.encode_single(gt_boxes, proposals), proposals),
        ),
        Case(
            "Matcher (low-quality matches)",
            f"{n_gt} gt x {n_anchor} anchors",
            partial(matcher, iou),
            partial(tv_matcher, iou),
        ),
        same("roi_align", rois_on, (*roi_in, 2), WRAPPER, "roi_align 7x7, sampling 2"),
        same("roi_pool", rois_on, roi_in, WRAPPER, "roi_pool 7x7"),
    ]
    n_soft = 200 if quick else 1000
    soft_boxes, soft_scores = nms_boxes[:n_soft], nms_scores[:n_soft]
    ss_image = _scene_image(*((60, 80) if quick else (240, 320)), gen)
    solos = [
        Solo(
            f"soft_nms ({kind})",
            f"{n_soft} boxes",
            partial(ops.soft_nms, soft_boxes, soft_scores, kind),
        )
        for kind in ("linear", "gaussian")
    ]
    solos += [
        Solo("spp_rois levels (6,3,2,1)", rois_on, partial(ops.spp_rois, features, rois, 1 / 16)),
        Solo(
            "selective_search fast, uncached",
            f"{ss_image.shape[1]}x{ss_image.shape[2]} image",
            partial(selective_search, ss_image, "fast", cache=False),
        ),
    ]
    return cases, solos


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def render(
    rows: list[dict[str, Any]],
    solos: list[dict[str, Any]],
    repeats: int,
    load: tuple[float, float] = (math.nan, math.nan),
) -> str:
    """The Markdown body (after the header) for the comparison rows and the solo rows."""
    lines = [
        "",
        f"Median of {repeats} interleaved samples per op; `ours/theirs` < 1 means visionlab",
        "is faster. `equal` is the largest absolute difference between the two outputs.",
    ]
    if not any(math.isnan(x) for x in load):
        lines.append(
            f"Load average (1 min) {load[0]:.1f} before and {load[1]:.1f} after the timings: "
            "other jobs sharing the CPU make absolute times noisy; ratios are measured "
            "interleaved to cancel most of it."
        )
    lines += [
        "",
        "| op | size | ours (ms) | torchvision (ms) | ours/theirs | equal (max abs diff) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms = (_ms(r["ours"]), _ms(r["theirs"]))
        lines.append(row(r["name"], r["size"], *ms, f"{r['ratio']:.2f}", f"{r['diff']:.3g}"))
    slow = [r for r in rows if r["ratio"] > 1.0]
    lines.append("")
    if slow:
        lines.append("Slower than torchvision in this run:")
        lines.append("")
        for r in slow:
            why = r["note"] or "no known cause; rerun on a quiet machine to confirm"
            lines.append(f"- {r['name']}: {r['ratio']:.2f} ({why}).")
    else:
        lines.append("No op was slower than its torchvision peer in this run.")
    lines += [
        "",
        "## Ops without a torchvision peer",
        "",
        "| op | size | ours (ms) |",
        "|---|---|---:|",
    ]
    lines += [row(r["name"], r["size"], _ms(r["ours"])) for r in solos]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        coco_eval = importlib.import_module("visionlab.bench.coco_eval")
    except ImportError as err:
        raise VisionLabError(
            f"visionlab.bench.coco_eval cannot be imported ({err}); ops.md needs its COCO "
            "section, so nothing was written"
        ) from err
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VisionLabError("--device cuda asked for, but no CUDA device is available")
    if args.repeats < 1:
        raise VisionLabError(f"--repeats must be >= 1, got {args.repeats}")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    load_before = load_average()
    try:
        cases, solos = build_cases(device, args.quick)
        rows = time_cases(cases, args.repeats, device)
        solo_rows = time_solos(solos, args.repeats, device)
    finally:
        torch.set_num_threads(threads)
    load = (load_before, load_average())
    coco = coco_eval.coco_eval_section(n_images=args.coco_images, seed=0)
    text = header("Ops against torchvision") + render(rows, solo_rows, args.repeats, load)
    text += "\n" + coco.rstrip() + "\n"
    print(text)
    write_markdown(args.out_dir, "ops.md", text)
    mismatched = [r["name"] for r in rows if r["diff"] > 1e-4]
    if mismatched:
        print(f"outputs differ from torchvision for: {', '.join(mismatched)}")
        return 1
    return 0
