"""Models for the web app's tests: one untrained checkpoint per task, 64 px, scenes classes
(what they predict is arbitrary; the tests check what the app does with it)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from app_standins import MODELS
from PIL import Image
from untrained import save_untrained

from visionlab.data.scenes import PREDICATES, SCENE_CLASSES


@pytest.fixture(scope="session")
def app_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of runs, ``<task>/checkpoints/best.pt`` (and a ``last.pt`` beside the
    classifier's, which the app leaves out)."""
    root = tmp_path_factory.mktemp("app-runs")
    for task, (name, args) in MODELS.items():
        best = root / task / "checkpoints" / "best.pt"
        save_untrained(best, name, task, args, classes=SCENE_CLASSES, predicates=PREDICATES)
    last = root / "classification" / "checkpoints" / "last.pt"
    last.write_bytes((root / "classification" / "checkpoints" / "best.pt").read_bytes())
    return root


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files a user might upload: a photo-like PNG, a text file renamed .png, and a
    decompression bomb (a PNG header claiming 40000 x 40000 pixels in a few bytes)."""
    root = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)
    photo = root / "photo.png"
    Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(photo)
    text = root / "notes.png"
    text.write_text("this is a text file, renamed\n", encoding="utf-8")
    bomb = root / "bomb.png"
    bomb.write_bytes(_png_header(40000, 40000))
    return {"photo": photo, "text": text, "bomb": bomb}


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels, with an empty image stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
