"""`visionlab app [--checkpoints DIR ...] [--host 127.0.0.1] [--port 7860]`: a web page to
try trained models in a browser.

The page offers every model under the ``--checkpoints`` folders (default ``runs``;
checkpoints ``*.pt`` but a run's ``last.pt`` beside its ``best.pt``, exported ``.onnx`` /
``.pt2`` files and export folders) for every task: upload an image or pick a scenes sample,
see the drawing (boxes, masks, class maps, scene graphs), the JSON record ``visionlab
predict`` would write and the time taken; a score-threshold slider and a gallery of the
last predictions. A file that is not an image, is over ``--max-upload-mb`` or
``--max-pixels``, or is a decompression bomb is refused with a message in the page; uploads
are deleted once decoded. The server binds to localhost unless ``--host`` says otherwise.
Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import threading

from visionlab.app import DEFAULT_PORT, LOCALHOST
from visionlab.app.core import MAX_PIXELS, MAX_UPLOAD_MB
from visionlab.argtypes import positive_int

_LOCAL = {LOCALHOST, "localhost", "::1"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoints",
        action="append",
        metavar="DIR",
        help="a folder searched for models, or a model file (repeatable; default: runs)",
    )
    parser.add_argument("--host", default=LOCALHOST, help=f"address to bind (default {LOCALHOST})")
    parser.add_argument("--port", type=positive_int, default=DEFAULT_PORT)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS, help="largest image")
    parser.add_argument(
        "--max-upload-mb", type=positive_int, default=MAX_UPLOAD_MB, help="largest upload in MB"
    )


def run(args: argparse.Namespace) -> int:
    from visionlab.app import serve

    if args.host not in _LOCAL:
        print(f"warning: serving on {args.host}: anyone who can reach it can use the models")
    with serve(
        args.checkpoints or ["runs"],
        host=args.host,
        port=args.port,
        device=args.device,
        max_pixels=args.max_pixels,
        max_upload_mb=args.max_upload_mb,
    ) as url:
        print(f"visionlab app: serving on {url} (Ctrl-C stops it)")
        threading.Event().wait()  # until Ctrl-C
    return 0
