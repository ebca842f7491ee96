"""``visionlab app``: a web page (Gradio) to try trained and exported models on an uploaded
image or a scenes sample (:mod:`.ui`), on what :mod:`.core` does without the page."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from visionlab.app.core import MAX_PIXELS, MAX_UPLOAD_MB, ModelCache, find_models
from visionlab.errors import VisionLabError

LOCALHOST = "127.0.0.1"
DEFAULT_PORT = 7860


@contextmanager
def serve(
    roots: list[str | Path],
    *,
    host: str = LOCALHOST,
    port: int = DEFAULT_PORT,
    device: str = "auto",
    max_pixels: int = MAX_PIXELS,
    max_upload_mb: int = MAX_UPLOAD_MB,
) -> Iterator[str]:
    """Start the app on ``host:port`` in background threads and yield its URL; on exit the
    server stops and what it stored in its private folder (:func:`_private_temp`) is
    removed.

    Raises:
        VisionLabError: no model under ``roots``.
    """
    from visionlab.engine.common import resolve_device

    choices = find_models(roots)
    if not choices:
        where = ", ".join(map(str, roots))
        raise VisionLabError(
            f"no model under {where}: train one (`make demo`, `visionlab train RECIPE`) or "
            "export one, or give --checkpoints DIR"
        )
    temp = _private_temp()
    # the server's own client polls it: a line per request at INFO would bury the output
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app: Any = None
    try:
        from visionlab.app.ui import SESSIONS, build_app

        app = build_app(ModelCache(choices, resolve_device(device)), max_pixels=max_pixels)
        _, url, _ = app.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            max_file_size=f"{max_upload_mb}mb",
            theme=app.visionlab_theme,
            ssr_mode=False,
            quiet=True,
            footer_links=[],
            state_session_capacity=SESSIONS,
        )
        yield url
    finally:
        if app is not None:
            app.close()
        for entry in Path(temp).iterdir():  # what this server stored: nothing is kept
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


_TEMP: list[str] = []  # the process's private folder for Gradio's files, once made


def _private_temp() -> str:
    """A private folder for Gradio's files (uploads on their way in, drawings on their way
    out), one per process and removed at exit: Gradio reads ``GRADIO_TEMP_DIR`` when it is
    first imported, so a second server in the process uses the same folder."""
    if not _TEMP:
        _TEMP.append(tempfile.mkdtemp(prefix="visionlab-app-"))
        atexit.register(shutil.rmtree, _TEMP[0], ignore_errors=True)
        os.environ["GRADIO_TEMP_DIR"] = _TEMP[0]
    return _TEMP[0]
