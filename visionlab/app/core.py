"""What the web app does, without the page: find the models a user can pick, load them once,
check an uploaded file before decoding it, and predict one image into the drawing, the JSON
record and the time taken, as ``visionlab predict`` would (:mod:`visionlab.app.ui` puts it
in a page)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from visionlab.errors import DataError, VisionLabError

# a checkpoint a run writes at every epoch or step: the run's best.pt stands for it
_SKIPPED_CHECKPOINTS = ("last.pt",)
MAX_PIXELS = 4096 * 4096  # --max-pixels: an upload with more pixels is refused
MAX_UPLOAD_MB = 20  # --max-upload-mb: the server refuses a larger file before it is stored
# a file that claims this many pixels per byte is a decompression bomb (PNG's deflate tops
# out near 1000:1; a real photo is far below)
BOMB_PIXELS_PER_BYTE = 1000
SAMPLES = 8  # scenes samples offered beside the upload


@dataclass(frozen=True)
class Choice:
    """A model the page offers: ``label`` (its path relative to the folder it was found in)
    and ``path`` (the file or export folder :func:`visionlab.load` takes)."""

    label: str
    path: Path


def find_models(roots: list[str | Path]) -> list[Choice]:
    """The models under ``roots`` (folders searched recursively, or files): checkpoints
    ``*.pt`` (a run's ``last.pt`` left out when its ``best.pt`` is there), exported
    ``*.onnx`` / ``*.pt2`` files and safetensors export folders, sorted by label."""
    from visionlab.engine.checkpoint import WEIGHTS
    from visionlab.export.runtime import EXPORT_SUFFIXES

    found: dict[Path, Choice] = {}
    for root in map(Path, roots):
        if root.is_file():
            found[root.resolve()] = Choice(root.name, root)
            continue
        if not root.is_dir():
            raise DataError(root, "no such folder or model file (--checkpoints)")
        for path in sorted(root.rglob("*")):
            if path.is_dir():
                if (path / WEIGHTS).is_file():
                    found[path.resolve()] = Choice(str(path.relative_to(root)), path)
                continue
            skip = path.name in _SKIPPED_CHECKPOINTS and (path.parent / "best.pt").is_file()
            model_file = (path.suffix == ".pt" and not skip) or path.suffix in EXPORT_SUFFIXES
            if model_file:
                found[path.resolve()] = Choice(str(path.relative_to(root)), path)
    return sorted(found.values(), key=lambda c: c.label)


class ModelCache:
    """Models loaded on first use (batch norms fused, as ``visionlab predict`` does), the
    ``size`` most recently used kept; safe to call from the server's worker threads."""

    def __init__(self, choices: list[Choice], device: torch.device, size: int = 4) -> None:
        self.choices = {c.label: c for c in choices}
        self.device, self.size = device, size
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, label: str) -> nn.Module:
        from visionlab.engine.api import load

        if label not in self.choices:
            raise VisionLabError(f"no model {label!r} in this app's list")
        with self._lock:  # one load at a time; a model is loaded once
            if label not in self._models:
                self._models[label] = load(self.choices[label].path, self.device, fuse=True)
                while len(self._models) > self.size:
                    self._models.popitem(last=False)
            self._models.move_to_end(label)
            return self._models[label]


def read_upload(
    path: str | Path, *, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> Tensor:
    """An uploaded file as ``Tensor[3, H, W]`` in [0, 1], checked from its header before its
    pixels are decoded: not an image, more than ``max_pixels`` pixels, or a decompression
    bomb (far more pixels than its bytes could hold) raise :class:`DataError` naming the
    file as ``name`` (the name it was uploaded with; default: the file's). The file is left
    as it is (the caller deletes it)."""
    from visionlab.data.imageio import image_size, load_image

    path = Path(path)
    name = name or path.name
    try:
        height, width = image_size(path)  # the header only
        pixels, size = height * width, path.stat().st_size
        if pixels > BOMB_PIXELS_PER_BYTE * max(size, 1):
            raise DataError(
                path,
                f"refused as a possible decompression bomb: {width} x {height} pixels in "
                f"{size} bytes",
            )
        if pixels > max_pixels:
            raise DataError(
                path,
                f"{width} x {height} pixels is over this app's limit of {max_pixels} pixels "
                "(visionlab app --max-pixels)",
            )
        return load_image(path)
    except DataError as err:
        raise DataError(name, err.reason) from None


class Uploads:
    """Uploaded files read (:func:`read_upload`) and deleted at once, with their folder when
    empty: uploads are not kept after the request. The server stores an upload under the
    hash of its content, so concurrent requests with the same file share one path: the
    image (or the refusal) read by the first is kept in memory for ``keep_s`` seconds for
    the others, whose file the first has deleted."""

    def __init__(self, *, max_pixels: int = MAX_PIXELS, keep_s: float = 60.0) -> None:
        self.max_pixels, self.keep_s = max_pixels, keep_s
        self._read: dict[str, tuple[float, Tensor | DataError]] = {}
        self._lock = threading.Lock()

    def read(self, path: str | Path) -> Tensor:
        key, now = str(path), time.monotonic()
        with self._lock:
            self._read = {k: v for k, v in self._read.items() if now - v[0] < self.keep_s}
            if key not in self._read or Path(path).exists():
                try:
                    outcome: Tensor | DataError = read_upload(path, max_pixels=self.max_pixels)
                except DataError as err:
                    outcome = err
                finally:
                    _delete(Path(path))
                self._read[key] = (now, outcome)
            outcome = self._read[key][1]
        if isinstance(outcome, DataError):
            raise outcome
        return outcome


def _delete(upload: Path) -> None:
    upload.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty, or already gone
        upload.parent.rmdir()


def scenes_samples(count: int = SAMPLES) -> dict[str, Tensor]:
    """The first ``count`` images of the built-in scenes dataset's val split, rendered in
    memory (the same pixels as the dataset's files), by name."""
    from visionlab.data.scenes import DEFAULT_SCENES_ARGS, render_images

    size, seed = DEFAULT_SCENES_ARGS["size"], DEFAULT_SCENES_ARGS["seed"]
    images = render_images("val", count, size=size, seed=seed)
    return {f"scenes val {i + 1:06d}.png": image for i, image in enumerate(images)}


@dataclass
class Result:
    """One prediction as the page shows it."""

    drawing: Any  # PIL image
    record: dict[str, Any]  # the record ``visionlab predict`` writes for the image
    predict_ms: float
    draw_ms: float


def predict_image(
    model: nn.Module,
    image: Tensor,
    *,
    name: str,
    score_threshold: float = 0.3,
    topk: int = 5,
    max_relations: int = 20,
    device: str | torch.device = "cpu",
) -> Result:
    """Predict one image ``Tensor[3, H, W]`` with :func:`visionlab.predict` on ``device`` (the
    model's: :attr:`ModelCache.device`) and draw it with what ``visionlab predict`` draws;
    the times are measured on this call."""
    from visionlab.engine.api import predict
    from visionlab.engine.predict_outputs import render_prediction

    start = time.perf_counter()
    options = {"topk": topk, "score_threshold": score_threshold, "device": str(device)}
    pred = predict(model, [image], **options)[0]
    middle = time.perf_counter()
    record, drawing = render_prediction(image, pred, model, name=name, max_relations=max_relations)
    end = time.perf_counter()
    return Result(drawing, record, (middle - start) * 1e3, (end - middle) * 1e3)
