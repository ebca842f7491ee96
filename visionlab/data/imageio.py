"""Safe image loading: any file Pillow reads becomes one RGB float tensor, or a clear DataError.

Rules (the same for every dataset format):

- EXIF orientation is applied (``ImageOps.exif_transpose``), so pixels and annotations agree
  with what an image viewer shows.
- Transparent images (RGBA, LA, PA, palette or RGB with a transparency key) are composited
  on **white**, the way a viewer shows them; the alpha channel is not kept.
- 16-bit grayscale (``I;16``) is scaled by 1/65535 straight to float (no 8-bit clipping);
  32-bit integer (``I``) and float (``F``) images are scaled by the smallest of 1, 255 or
  65535 that covers their maximum, and refused when they exceed 65535 or are negative.
- CMYK, YCbCr, LAB, HSV, 1-bit and palette images are converted to RGB by Pillow.
- Decompression bombs are refused: an image over ``PIL.Image.MAX_IMAGE_PIXELS`` raises
  :class:`DataError` (raise the limit yourself for files you trust).
- Missing, corrupt or truncated files raise :class:`DataError` naming the file and, when
  given, the annotation that refers to it (``ref``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from visionlab.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# EXIF orientations 5..8 rotate by 90 degrees, so width and height swap.
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


def is_image_file(path: Path) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


@contextmanager
def open_image(path: str | Path, *, ref: str | None = None) -> Iterator[Image.Image]:
    """Open ``path`` with Pillow (header only) and turn every failure into a DataError.

    Errors raised inside the ``with`` block by Pillow (decoding, truncation) are converted
    too. ``ref`` names what refers to the file (e.g. ``"image_id=3"``) for the message.
    """
    path = Path(path)
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                yield img
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(path, "image file not found", field=ref) from None
        except IsADirectoryError:
            raise DataError(path, "expected an image file, found a folder", field=ref) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise DataError(
                path,
                f"refused as a possible decompression bomb ({err}); raise "
                "PIL.Image.MAX_IMAGE_PIXELS if you trust this file",
                field=ref,
            ) from None
        except UnidentifiedImageError:
            raise DataError(path, "not an image file Pillow can read", field=ref) from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise DataError(path, f"corrupt or truncated image ({err})", field=ref) from None


def image_size(path: str | Path, *, ref: str | None = None) -> tuple[int, int]:
    """``(H, W)`` of the image as :func:`load_image` returns it, reading only the header.

    EXIF orientations that rotate by 90 degrees swap the stored width and height.
    """
    with open_image(path, ref=ref) as img:
        width, height = img.size
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a broken EXIF block: load_image ignores it the same way
            orientation = 1
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return height, width


def load_image(path: str | Path, *, ref: str | None = None) -> torch.Tensor:
    """Decode an image file into ``Tensor[3, H, W]`` float32 in ``[0, 1]``, RGB.

    Args:
        path: the image file.
        ref: what refers to it (annotation file and id), named in error messages.

    Returns:
        ``Tensor[3, H, W]`` float32, EXIF orientation applied, any mode converted to RGB
        (see the module docstring for transparency and high-bit-depth rules).

    Raises:
        DataError: missing, unreadable, corrupt or truncated file, or a decompression bomb.
    """
    with open_image(path, ref=ref) as img:
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as err:  # malformed EXIF: keep the stored orientation, say so
            logger.warning("%s: EXIF orientation unreadable (%s); using stored pixels", path, err)
        return _to_rgb_tensor(img, Path(path), ref)


def _to_rgb_tensor(img: Image.Image, path: Path, ref: str | None) -> torch.Tensor:
    if img.mode.startswith("I;16") or img.mode in {"I", "F"}:
        return _high_bit_depth(img, path, ref)
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    array = np.asarray(img, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def _high_bit_depth(img: Image.Image, path: Path, ref: str | None) -> torch.Tensor:
    array = np.asarray(img).astype(np.float32)  # [H, W]
    if img.mode.startswith("I;16"):
        scale = 65535.0
    else:
        if array.size and (not np.isfinite(array).all() or array.min() < 0):
            raise DataError(path, f"{img.mode}-mode image has negative or NaN values", field=ref)
        peak = float(array.max()) if array.size else 0.0
        scale = next((s for s in (1.0, 255.0, 65535.0) if peak <= s), None)
        if scale is None:
            raise DataError(path, f"{img.mode}-mode image has values up to {peak:g}", field=ref)
    gray = torch.from_numpy(array).div_(scale)
    return gray.unsqueeze(0).expand(3, -1, -1).contiguous()


def load_label_png(
    path: str | Path,
    *,
    colormap: Sequence[tuple[int, int, int]] | None = None,
    ref: str | None = None,
) -> torch.Tensor:
    """Read a label map PNG (palette or grayscale indices) into ``Tensor[H, W]`` int64.

    Palette (``P``) and grayscale images give their stored indices. An RGB label image is
    mapped through ``colormap`` (index -> colour); colours not in it raise DataError.
    EXIF orientation is not applied: label maps are written pixel-aligned with the image.
    """
    with open_image(path, ref=ref) as img:
        img.load()
        if img.mode in {"P", "L", "I", "I;16"}:
            return torch.from_numpy(np.asarray(img).astype(np.int64))
        if colormap is None or img.mode not in {"RGB", "RGBA"}:
            raise DataError(path, f"label image must be palette or grayscale, got {img.mode}")
        rgb = np.asarray(img.convert("RGB")).astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.full(code.shape, -1, dtype=np.int64)
    for index, (r, g, b) in enumerate(colormap):
        out[code == ((r << 16) | (g << 8) | b)] = index
    if (out < 0).any():
        y, x = map(int, np.argwhere(out < 0)[0])
        raise DataError(path, f"colour {tuple(rgb[y, x])} at (x={x}, y={y}) is not in the colormap")
    return torch.from_numpy(out)


def save_label_png(
    path: Path, label: torch.Tensor, palette: Sequence[tuple[int, int, int]]
) -> None:
    """Write ``Tensor[H, W]`` of indices 0..255 as a palette PNG with ``palette`` colours."""
    if label.numel() and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must be in 0..255 for a palette PNG ({path})")
    array = label.to(torch.uint8).numpy()
    img = Image.fromarray(array)  # mode "L"; putpalette turns it into "P"
    flat = [c for rgb in palette for c in rgb]
    img.putpalette(flat + [0] * (768 - len(flat)))
    img.save(path)
