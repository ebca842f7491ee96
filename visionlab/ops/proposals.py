"""Class-agnostic region proposals for R-CNN, SPPNet and Fast R-CNN: selective search (Uijlings
et al. 2013, OpenCV ximgproc) with an on-disk cache, dense sliding windows, and proposal
recall / average recall (Hosang et al. 2016) to measure them.

Boxes are ``Tensor[K, 4]`` float32 ``(x1, y1, x2, y2)`` in pixels. numpy appears only at the
OpenCV boundary.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from visionlab.errors import VisionLabError
from visionlab.ops.boxes import box_iou
from visionlab.paths import visionlab_home

__all__ = ["proposal_recall", "resize_longer", "selective_search", "sliding_windows"]

log = logging.getLogger(__name__)

_MODES = ("fast", "quality")
_CACHE_VERSION = "ss-v1"
_LOCK = threading.Lock()
# IoU thresholds of average recall: 0.5:0.05:0.95, as COCO and Hosang et al.
AR_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def default_cache_dir() -> Path:
    """``$VISIONLAB_HOME/ss_cache`` (``~/.cache/visionlab/ss_cache`` when unset)."""
    return visionlab_home() / "ss_cache"


def _to_bgr_uint8(image: Tensor | np.ndarray) -> np.ndarray:
    """The image as OpenCV wants it: contiguous ``uint8 [H, W, 3]`` BGR."""
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be Tensor[3, H, W] RGB, got shape {tuple(image.shape)}")
        if image.is_floating_point():
            image = (image.detach() * 255).round_().clamp_(0, 255).to(torch.uint8)
        elif image.dtype != torch.uint8:
            raise ValueError(f"image tensor must be float in [0, 1] or uint8, got {image.dtype}")
        rgb = image.permute(1, 2, 0).cpu().numpy()
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"numpy image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}"
            )
        rgb = image
    else:
        raise TypeError(f"image must be a Tensor[3, H, W] or numpy HWC array, got {type(image)}")
    if 0 in rgb.shape[:2]:
        raise ValueError(f"image is empty: shape {rgb.shape}")
    return np.ascontiguousarray(rgb[:, :, ::-1])


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except (OSError, TypeError):  # pragma: no cover - platform dependent
        return None


def _seed_c_rand() -> None:
    """OpenCV ranks regions with C ``rand()`` (level * random); seeding it makes the order, not
    only the set, of boxes reproducible. Where libc cannot be reached the set is unchanged."""
    libc = _libc()
    if libc is not None and hasattr(libc, "srand"):
        libc.srand(0)


def _run_opencv(bgr: np.ndarray, mode: str, num_threads: int) -> np.ndarray:
    """All selective-search boxes of ``bgr`` as ``float32 [K, 4]`` xyxy, OpenCV's order."""
    import cv2

    if not hasattr(cv2, "ximgproc"):  # pragma: no cover - depends on the installed wheel
        raise VisionLabError(
            "selective search needs OpenCV's contrib modules: install "
            "opencv-contrib-python-headless instead of opencv-python"
        )
    with _LOCK:
        previous = cv2.getNumThreads()
        cv2.setNumThreads(num_threads)
        try:
            ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
            ss.setBaseImage(bgr)
            if mode == "fast":
                ss.switchToSelectiveSearchFast()
            else:
                ss.switchToSelectiveSearchQuality()
            _seed_c_rand()
            rects = ss.process()
        finally:
            cv2.setNumThreads(previous)
    xywh = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
    xywh[:, 2:] += xywh[:, :2]  # (x, y, w, h) covers pixels x..x+w-1, i.e. [x, x + w]
    return xywh


def _cache_key(bgr: np.ndarray, mode: str) -> str:
    import cv2

    h = hashlib.sha256()
    h.update(f"{_CACHE_VERSION}|{cv2.__version__}|{mode}|{bgr.shape}".encode())
    h.update(bgr.tobytes())
    return h.hexdigest()


def _load_cached(path: Path) -> np.ndarray | None:
    try:
        boxes = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as err:
        log.warning("ignoring unreadable selective-search cache file %s (%s)", path, err)
        return None
    if boxes.dtype != np.float32 or boxes.ndim != 2 or boxes.shape[1] != 4:
        log.warning("ignoring malformed selective-search cache file %s", path)
        return None
    return boxes


def _save_atomic(path: Path, boxes: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, boxes, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        log.warning("could not write selective-search cache %s (%s); continuing", path, err)


def resize_longer(image: Tensor, size: int) -> tuple[Tensor, float]:
    """``image [3, H, W]`` (float in [0, 1]) resized bilinearly so its longer side is
    ``size``, and the factor applied; ``size <= 0`` (or already that size) returns the image
    and 1. Selective search finds more of the small objects of a small image on an enlarged
    copy; divide its boxes by the factor to map them back.
    """
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    factor = size / max(h, w) if size > 0 else 1.0
    if size <= 0 or abs(factor - 1) < 1e-6:
        return image, 1.0
    out_size = (max(1, round(h * factor)), max(1, round(w * factor)))
    resized = F.interpolate(image[None], size=out_size, mode="bilinear", align_corners=False)
    return resized[0].clamp(0, 1), factor


def selective_search(
    image: Tensor | np.ndarray,
    mode: str = "fast",
    max_boxes: int | None = 2000,
    cache_dir: str | os.PathLike | None = None,
    *,
    cache: bool = True,
    num_threads: int = 1,
    search_size: int = 0,
    reuse_mirror: bool = False,
) -> Tensor:
    """Selective search proposals (Uijlings et al., IJCV 2013) with OpenCV's ximgproc.

    Results are cached on disk, keyed by a hash of the image content (as uint8), the mode,
    ``search_size`` and the OpenCV version, so the second call for an image costs a file
    read. The order is OpenCV's (hierarchy level times a random factor, as in the paper) made
    reproducible by seeding that random factor; ``max_boxes`` keeps the first boxes of that
    order.

    Args:
        image: ``Tensor[3, H, W]`` RGB, float in [0, 1] or uint8; or a numpy ``uint8
            [H, W, 3]`` RGB array.
        mode: ``"fast"`` (the R-CNN setting, ~2k boxes) or ``"quality"`` (more, slower).
        max_boxes: keep at most this many boxes (``None``: all).
        cache_dir: cache folder; default ``$VISIONLAB_HOME/ss_cache``.
        cache: set False to neither read nor write the cache.
        num_threads: OpenCV threads during the call (restored after). One is right when data
            loader workers run several searches at once; the grouping stage is serial anyway.
        search_size: > 0: search a copy of the image resized so its longer side is this many
            pixels (:func:`resize_longer`; small objects of a small image are found on an
            enlarged copy) and map the boxes back, clipped to the image; 0: the image as
            given. The cache is keyed by the image as given, whose mirror is exact.
        reuse_mirror: on a cache miss, serve the mirrored boxes of the horizontally flipped
            image when those are cached (a flip is the detectors' training augmentation, so
            one pass over a dataset serves both).

    Returns:
        ``Tensor[K, 4]`` float32 xyxy pixel boxes inside the image, on the CPU (or the device
        of a tensor ``image``).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if max_boxes is not None and max_boxes < 0:
        raise ValueError(f"max_boxes must be >= 0 or None, got {max_boxes}")
    if not isinstance(search_size, int) or search_size < 0:
        raise ValueError(f"search_size must be a length in pixels >= 0, got {search_size!r}")
    device = image.device if isinstance(image, Tensor) else torch.device("cpu")
    bgr = _to_bgr_uint8(image)
    key_mode = mode if search_size == 0 else f"{mode}|search_size={search_size}"
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = None
    boxes = None
    if cache:
        key = _cache_key(bgr, key_mode)
        path = folder / key[:2] / f"{key}.npy"
        boxes = _load_cached(path)
        if boxes is None and reuse_mirror:
            mirror = _cache_key(np.ascontiguousarray(bgr[:, ::-1]), key_mode)
            mirrored = _load_cached(folder / mirror[:2] / f"{mirror}.npy")
            if mirrored is not None:
                x1, y1, x2, y2 = mirrored.T
                width = bgr.shape[1]
                boxes = np.stack([width - x2, y1, width - x1, y2], axis=1).astype(np.float32)
                path = None  # served; nothing new to write
    if boxes is None:
        boxes = _search_at(image, bgr, mode, num_threads, search_size)
        if path is not None:
            _save_atomic(path, boxes)
    if max_boxes is not None:
        boxes = boxes[:max_boxes]
    return torch.from_numpy(np.ascontiguousarray(boxes)).to(device)


def _search_at(
    image: Tensor | np.ndarray, bgr: np.ndarray, mode: str, num_threads: int, search_size: int
) -> np.ndarray:
    """OpenCV's boxes of ``image`` (``bgr`` its OpenCV form), searched at ``search_size``
    (0: as given) and mapped back. A float image is resized as given, before quantising."""
    if search_size == 0:
        return _run_opencv(bgr, mode, num_threads)
    if isinstance(image, Tensor) and image.is_floating_point():
        rgb = image.detach().float().cpu()
    else:
        rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1) / 255
    search, factor = resize_longer(rgb, search_size)
    if factor == 1.0:
        return _run_opencv(bgr, mode, num_threads)
    found = torch.from_numpy(_run_opencv(_to_bgr_uint8(search), mode, num_threads)) / factor
    height, width = bgr.shape[:2]
    found[:, 0::2] = found[:, 0::2].clamp(0, width)
    found[:, 1::2] = found[:, 1::2].clamp(0, height)
    return found.numpy().astype(np.float32)


def sliding_windows(
    image_size: tuple[int, int],
    sizes: Sequence[float],
    aspect_ratios: Sequence[float] = (1.0,),
    stride: int | tuple[int, int] = 16,
    device: torch.device | str | None = None,
) -> Tensor:
    """Every window of the given shapes that fits in the image, on a regular grid.

    The dense baseline to selective search (Overfeat / DPM style). A window of size ``s`` and
    ratio ``r`` (height / width) is ``round(s / sqrt(r))`` wide and ``round(s * sqrt(r))``
    high; its top-left corner steps by ``stride`` from 0, and the last row / column is
    added so the right and bottom edges are covered. Shapes larger than the image are skipped.

    Args:
        image_size: ``(H, W)``.
        sizes: window sizes (square root of the area), pixels.
        aspect_ratios: ratios ``height / width``.
        stride: step in pixels, an int or ``(stride_y, stride_x)``.

    Returns:
        ``Tensor[K, 4]`` float32 xyxy, ordered by size, ratio, row, column.
    """
    height, width = int(image_size[0]), int(image_size[1])
    sy, sx = (stride, stride) if isinstance(stride, int) else (int(stride[0]), int(stride[1]))
    if sy < 1 or sx < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    if min(sizes, default=1) <= 0 or min(aspect_ratios, default=1) <= 0:
        raise ValueError("sizes and aspect_ratios must be > 0")
    device = torch.device(device) if device is not None else torch.device("cpu")

    def starts(extent: int, window: int, step: int) -> Tensor:
        s = torch.arange(0, extent - window + 1, step, device=device)
        if s[-1] != extent - window:
            s = torch.cat([s, s.new_tensor([extent - window])])
        return s

    out = []
    for size in sizes:
        for ratio in aspect_ratios:
            w = max(1, round(size / ratio**0.5))
            h = max(1, round(size * ratio**0.5))
            if w > width or h > height:
                continue
            ys, xs = torch.meshgrid(starts(height, h, sy), starts(width, w, sx), indexing="ij")
            x1, y1 = xs.reshape(-1), ys.reshape(-1)
            out.append(torch.stack([x1, y1, x1 + w, y1 + h], dim=1))
    if not out:
        return torch.zeros((0, 4), dtype=torch.float32, device=device)
    return torch.cat(out).float()


def proposal_recall(
    proposals: Sequence[Tensor],
    gt: Sequence[Tensor],
    iou_thresholds: Sequence[float] = (0.5, 0.7),
    max_proposals: int | None = None,
) -> dict[str, float]:
    """Recall of ground-truth boxes by proposals, and average recall (AR).

    A gt box is recalled at threshold ``t`` when some proposal of its image has IoU >= t with
    it (no one-to-one assignment: Hosang et al., "What makes for effective detection
    proposals?", PAMI 2016). AR is the mean recall over IoU 0.5:0.05:0.95, the field's AR.

    Args:
        proposals: per image ``Tensor[K_i, 4]`` xyxy, best first.
        gt: per image ``Tensor[G_i, 4]`` xyxy.
        iou_thresholds: thresholds to report recall at.
        max_proposals: use only the first this many proposals per image.

    Returns:
        ``{"recall@T": ..., "AR": ..., "num_gt": G, "num_images": N, "mean_proposals": ...}``
        with ``T`` formatted like ``0.5``; recalls are NaN when there is no gt box.
    """
    if len(proposals) != len(gt):
        raise ValueError(f"got proposals for {len(proposals)} images but gt for {len(gt)}")
    thresholds = [float(t) for t in iou_thresholds]
    best: list[Tensor] = []
    num_props = 0
    for i, (props, boxes) in enumerate(zip(proposals, gt)):
        if props.dim() != 2 or props.shape[1] != 4 or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"image {i}: proposals and gt must be Tensor[K, 4], got "
                f"{tuple(props.shape)} and {tuple(boxes.shape)}"
            )
        if max_proposals is not None:
            props = props[:max_proposals]
        num_props += props.shape[0]
        if boxes.shape[0] == 0:
            continue
        if props.shape[0] == 0:
            best.append(boxes.new_zeros(boxes.shape[0], dtype=torch.float32).cpu())
            continue
        iou = box_iou(boxes, props.to(device=boxes.device, dtype=boxes.dtype))  # [G, K]
        best.append(iou.max(dim=1).values.float().cpu())
    best_iou = torch.cat(best) if best else torch.zeros(0)
    num_gt = int(best_iou.numel())

    def recall(t: float) -> float:
        return float((best_iou >= t).float().mean()) if num_gt else float("nan")

    result: dict[str, float] = {f"recall@{t:g}": recall(t) for t in thresholds}
    result["AR"] = (
        sum(recall(t) for t in AR_THRESHOLDS) / len(AR_THRESHOLDS) if num_gt else float("nan")
    )
    result["num_gt"] = num_gt
    result["num_images"] = len(gt)
    result["mean_proposals"] = num_props / len(gt) if len(gt) else 0.0
    return result
