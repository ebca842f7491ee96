"""What `visionlab predict` reads: the inputs named on its command line expanded to files
(folders, glob patterns, text files of paths, videos), and the DataLoaders that decode and
transform them in worker processes while the model predicts."""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from visionlab.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")  # read with OpenCV's VideoCapture
PATH_LIST_SUFFIX = ".txt"  # an input ending so is a text file of paths, one a line
GLOB_CHARS = "*?["

Transform = Callable[[Tensor, dict], tuple[Tensor, dict]]


def is_video_file(path: Path) -> bool:
    """True when ``path`` has one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def default_workers() -> int:
    """Decoding processes: 2, fewer on a machine with fewer than 3 cores (the model needs one)."""
    return min(2, max(0, (os.cpu_count() or 1) - 1))


def skipped_entry(path: Path | str, reason: str) -> dict[str, str]:
    """The JSON entry of a skipped file: the file, and why (without the file's name)."""
    return {"file": str(path), "reason": reason}


def _reason(err: DataError) -> str:
    return str(err).removeprefix(f"{err.path}: ")


@dataclass
class Frame:
    """One image to predict: an image file, or a frame of a video (``frame`` its index from
    0 and ``time_s`` its time, from the video's frame rate; None when the rate is unknown).

    ``image`` is the decoded ``Tensor[3, H, W]`` in [0, 1], ``prepared`` the model's eval
    transform of it; both are None and ``error`` says why when the file does not decode."""

    file: Path
    frame: int | None = None
    time_s: float | None = None
    image: Tensor | None = None
    prepared: Tensor | None = None
    error: str | None = None


# ---------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """The readable files (in order), the skipped ones, and how many images they hold (a
    video's frames counted at ``every``, from its header: the progress bar's total)."""

    files: list[Path]
    skipped: list[dict[str, str]]
    total: int


def collect_inputs(inputs: Sequence[str], *, skip: Path | None = None, every: int = 1) -> Inputs:
    """Expand ``inputs`` to files and read each one's header.

    An input is a folder (searched recursively for image and video files, sorted), a text
    file ``*.txt`` of paths (one a line, relative to the text file; blank lines and lines
    starting with ``#`` are skipped), a glob pattern (expanded here, ``**`` recursive, so a
    quoted pattern works; only image and video files are kept), or a file. Folders and
    patterns leave out what lies inside ``skip`` (the output folder).

    Raises:
        DataError: an input that does not exist, a folder without image or video files, a
            pattern matching none, or a text file that is not UTF-8.
    """
    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    skip = skip.resolve() if skip is not None else None
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += _folder_files(path, skip)
        elif path.is_file() and path.suffix.lower() == PATH_LIST_SUFFIX:
            files += _listed_files(path, skip, skipped)
        elif path.is_file():
            files.append(path)
        elif any(c in item for c in GLOB_CHARS):
            found = _outside(_media(Path(p) for p in glob.glob(item, recursive=True)), skip)
            if not found:
                raise DataError(path, "no image or video file matches this pattern")
            files += found
        else:
            raise DataError(path, "no such image file or folder")
    readable, total = [], 0
    for path in files:
        try:
            count = _frame_count(path) if is_video_file(path) else _check_image(path)
        except DataError as err:
            skipped.append(skipped_entry(path, _reason(err)))
        else:
            readable.append(path)
            total += math.ceil(count / every)
    return Inputs(readable, skipped, total)


def _media(paths: Any) -> list[Path]:
    from visionlab.data.imageio import is_image_file

    return sorted(p for p in paths if p.is_file() and (is_image_file(p) or is_video_file(p)))


def _outside(paths: list[Path], skip: Path | None) -> list[Path]:
    if skip is None:
        return paths
    return [p for p in paths if skip not in p.resolve().parents]


def _folder_files(folder: Path, skip: Path | None) -> list[Path]:
    found = _outside(_media(folder.rglob("*")), skip)
    if not found:
        raise DataError(folder, "folder holds no image or video files")
    return found


def _listed_files(listing: Path, skip: Path | None, skipped: list[dict[str, str]]) -> list[Path]:
    """The files a text file names; a line naming nothing is added to ``skipped``."""
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(listing, "not a UTF-8 text file of paths, one a line") from None
    files = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        path = path if path.is_absolute() else listing.parent / path
        where = f"listed in {listing} line {number}"
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            try:
                files += _folder_files(path, skip)
            except DataError as err:
                skipped.append(skipped_entry(path, f"{_reason(err)} ({where})"))
        else:
            skipped.append(skipped_entry(path, f"no such file ({where})"))
    return files


def _check_image(path: Path) -> int:
    from visionlab.data.imageio import image_size

    image_size(path)
    return 1


def _frame_count(path: Path) -> int:
    """The frames a video's header announces (at least 1); DataError when OpenCV cannot
    open it or read its first frame."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened() or not capture.grab():
            raise DataError(path, "not a video file OpenCV can read")
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)  # some containers do not say
        return max(1, int(count)) if math.isfinite(count) else 1
    finally:
        capture.release()


def video_fps(path: Path) -> float | None:
    """The video's frame rate from its header; None when it gives none."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return fps if fps > 0 and math.isfinite(fps) else None


# --------------------------------------------------------------------------- loading


class ImageFiles(Dataset):
    """Image files decoded (``load_image``) and transformed; a file that does not decode
    gives a :class:`Frame` with its ``error`` instead of stopping the loader."""

    def __init__(self, files: Sequence[Path], transform: Transform) -> None:
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Frame:
        from visionlab.data.imageio import load_image

        path = self.files[index]
        try:
            image = load_image(path)
        except DataError as err:  # the header read, the pixels do not
            return Frame(path, error=_reason(err))
        return Frame(path, image=image, prepared=self.transform(image, {})[0])


class VideoFrames(IterableDataset):
    """Every ``every``-th frame of a video (from frame 0), decoded in order by OpenCV and
    converted as ``load_image`` converts an 8-bit RGB image."""

    def __init__(self, path: Path, transform: Transform, every: int = 1) -> None:
        self.path, self.transform, self.every = path, transform, every

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        fps = video_fps(self.path)
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while True:
                wanted = index % self.every == 0
                ok, bgr = capture.read() if wanted else (capture.grab(), None)
                if not ok:
                    return
                if wanted:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # [H, W, 3] uint8
                    image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
                    time_s = round(index / fps, 4) if fps else None
                    prepared = self.transform(image, {})[0]
                    yield Frame(self.path, index, time_s, image, prepared)
                index += 1
        finally:
            capture.release()


def stream_batches(
    files: Sequence[Path],
    transform: Transform,
    *,
    batch_size: int,
    workers: int = 0,
    every: int = 1,
) -> Iterator[list[Frame]]:
    """Batches of :class:`Frame` in the order of ``files``: each run of image files through
    one DataLoader with ``workers`` processes, each video through its own with at most one
    (a video decodes in order)."""
    start = 0
    while start < len(files):
        if is_video_file(files[start]):
            dataset: Dataset = VideoFrames(files[start], transform, every)
            num_workers, start = min(workers, 1), start + 1
        else:
            end = start
            while end < len(files) and not is_video_file(files[end]):
                end += 1
            dataset = ImageFiles(files[start:end], transform)
            num_workers = min(workers, math.ceil((end - start) / batch_size))
            start = end
        # collate_fn=list: frames stay whole (sizes differ; the task batches them)
        yield from DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list
        )
