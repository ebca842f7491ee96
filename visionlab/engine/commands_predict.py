"""`visionlab predict CKPT INPUT... --out DIR`: predict images and videos, draw the results.

Inputs: image files; folders (searched recursively for image and video files); glob
patterns, expanded here so they work quoted (``'data/**/*.jpg'``, ``**`` recursive; only
image and video files kept); text files of paths ``*.txt`` (one a line, relative paths
relative to the text file, blank lines and ``#`` comments skipped); videos (``.mp4``,
``.avi``, ``.mkv``, ``.mov``, read by OpenCV; ``--every N`` predicts frames 0, N, 2N, ...).
They stream through a DataLoader (``--workers`` decoding processes, default 2 or fewer on a
small machine; ``--batch-size`` images a batch) with a progress bar; the predictions are
those of ``visionlab.predict`` for the same images (the same transform, mapped back to each
image's pixels the same way).

The model is a checkpoint or an export (``visionlab export``: a safetensors folder, or a
``model.onnx`` / ``model.pt2`` or its folder, run by :mod:`visionlab.export.runtime` on the
CPU with the same predictions).

Writes ``DIR/predictions.json`` (every image's predictions, in its own pixels: the top-k
classes, or boxes ``[x1, y1, x2, y2]`` with class and score, or a class-map PNG) and one
drawn PNG per image (segmentation adds the class map as a palette PNG). A video's frames are
records too, with ``frame`` (index from 0) and ``time_s``; they are drawn into the annotated
video ``NAME_pred.mp4`` (mp4v, the video's frame rate divided by ``--every``, named by each
record's ``video``) rather than into PNGs. Drawing is on by default, as it always was (a
user who predicts a few images wants to look at them); ``--no-save-images`` turns off the
PNGs and annotated videos alike, for speed on large inputs (segmentation's class-map PNG,
the prediction itself, is written either way). ``--save-txt`` (box models) writes
``DIR/labels/NAME.txt`` (a video's frames ``NAME_FRAME.txt``, six digits), one YOLO line per
detection, ``class cx cy w h conf``: the class from 0, the box normalised by the image's
width and height, named by each record's ``txt``. Detectors also write
``DIR/coco_results.json``, the detections as a COCO results list (``image_id``,
``category_id`` = the label 1..C, ``bbox`` ``[x, y, w, h]``, ``score``), which ``visionlab
eval detections --gt GT.json --dt coco_results.json`` scores; ``image_id`` is the file's
stem as a number when it is all digits (COCO's ``000000000139.jpg`` is image 139), else the
file name (a video frame's ``NAME.mp4#FRAME``). Instance models (Mask R-CNN) add to each
detection, in both files, ``segmentation``: its mask as a COCO RLE (``size`` ``[H, W]`` of
the image, ``counts`` a string), scored by ``--iou-type segm``; their drawings give each
instance its own colour (mask filled translucent and outlined, box, class and score).
Relation models add ``relations``, each ``{"subject": i, "predicate": NAME, "object": j,
"score": s}`` (i, j index the image's ``detections``; best first, one predicate per pair
unless ``--no-graph-constraint``), and draw the numbered boxes with arrows from subject to
object beside the scene graph (``--max-relations`` drawn). Without ``--out``, a checkpoint
inside a run directory (``RUN/checkpoints/best.pt``) writes to ``RUN/predictions/``.
``--show-proposals`` (models that return the extra ``"proposals"``: the R-CNN family) also
writes ``NAME_proposals.png`` per image, the model's region proposals beside selective
search's, and records only their count in the JSON; ``--show-grid`` (the extra ``"grid"``:
YOLO) draws the grid and records each detection's cell. Both are asked of the model by
argument (``visionlab.predict(..., extras=...)``).

Nothing is lost: each record is appended to the journal ``DIR/predictions.jsonl`` and
flushed as soon as its image is done; at the end ``predictions.json`` is written from it and
the journal removed. Ctrl-C stops the run with the records written so far assembled into
``predictions.json`` (and the annotated video closed, so it plays), prints how many images
were done and exits with 130; a run killed outright leaves the journal.

The user's files are safe: an ``--out`` that is an input folder or holds an input (a file a
text file names included) is refused, and an ``--out`` inside an input folder or under a
pattern is left out of the search (a second run does not predict the first one's drawings).
A name already taken in ``DIR`` (``NAME.png``, ``predictions.json``, ``labels/NAME.txt``,
...) is never overwritten: the new file becomes ``NAME_1.png``, ``predictions_1.json`` (with
``predictions_1.jsonl``), ... An ``--out`` that cannot be a writable folder is reported
before the model loads. A file that cannot be read (an image whose header or pixels do not
decode, a video OpenCV cannot open, a line of a text file naming nothing) is skipped with a
warning naming it and listed under ``skipped`` in the JSON, and the run goes on; the summary
counts them. The run fails only when no input is readable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from visionlab.argtypes import non_negative_int, positive_int, unit_interval
from visionlab.constants import BOX_TASKS
from visionlab.engine.predict_outputs import LABELS, PredictionWriter
from visionlab.engine.streaming import VIDEO_EXTENSIONS, default_workers
from visionlab.errors import VisionLabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", help="a .pt checkpoint, an exported folder, or a model.onnx / model.pt2"
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="images, folders, glob patterns ('data/**/*.jpg'), text files of paths (.txt), "
        f"videos ({', '.join(VIDEO_EXTENSIONS)})",
    )
    parser.add_argument(
        "--out", help="output folder (default: RUN/predictions for a checkpoint in a run)"
    )
    parser.add_argument(
        "--topk", type=positive_int, default=5, help="classes per image (classification)"
    )
    parser.add_argument(
        "--score-threshold",
        type=unit_interval,
        default=0.3,
        help="drop detections scoring below this (0..1)",
    )
    parser.add_argument(
        "--show-grid",
        action="store_true",
        help="YOLO: draw the S x S grid and shade the cells the detections came from",
    )
    parser.add_argument(
        "--show-proposals",
        action="store_true",
        help="R-CNN family: also draw the model's region proposals beside selective search's",
    )
    parser.add_argument(
        "--no-graph-constraint",
        action="store_true",
        help="relation models: rank every (pair, predicate), not one predicate per pair",
    )
    parser.add_argument(
        "--max-relations",
        type=positive_int,
        default=20,
        help="relation models: relationships drawn per image (the JSON lists them all)",
    )
    parser.add_argument(
        "--every", type=positive_int, default=1, help="videos: predict every N-th frame"
    )
    parser.add_argument(
        "--save-images",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw the predictions: a PNG per image, NAME_pred.mp4 per video (default: on)",
    )
    parser.add_argument(
        "--save-txt",
        action="store_true",
        help="detectors: also write labels/NAME.txt, YOLO lines 'class cx cy w h conf'",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=default_workers(),
        help="processes decoding the inputs (0: in the main process)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def _warn_skipped(entry: dict[str, str]) -> None:
    print(
        f"visionlab predict: warning: skipped {entry['file']}: {entry['reason']}", file=sys.stderr
    )


def _check_out(out: Path, inputs: list[str]) -> None:
    """Refuse an ``--out`` that is an input or holds one: the drawings would replace or mix
    with the images."""
    where = out.resolve()
    for item in inputs:
        path = Path(item).resolve()
        if path == where:
            raise VisionLabError(
                f"--out {out} is the input {item}: its drawings would replace the images; "
                "choose another folder"
            )
        if where in path.parents:
            raise VisionLabError(
                f"--out {out} holds the input {item}: its drawings could replace the images; "
                "choose a folder outside the inputs"
            )


def _nothing_readable(skipped: list[dict[str, str]]) -> str:
    if not skipped:
        return "nothing to predict: the inputs hold no image and no video frame"
    first = skipped[0]
    more = f" (and {len(skipped) - 1} more unreadable files)" if len(skipped) > 1 else ""
    return f"no readable image to predict: {first['file']}: {first['reason']}{more}"


def _extras(args: argparse.Namespace, model: Any) -> tuple[str, ...]:
    """The extras ``--show-grid`` / ``--show-proposals`` ask of the model; one it does not
    make is refused in one line naming the models that make it."""
    from visionlab.models.detector import supported_extras

    supported, name = supported_extras(model), model.meta.get("model_name")
    fmt = model.meta.get("format")
    asked = getattr(args, "show_grid", False) or getattr(args, "show_proposals", False)
    if fmt in ("onnx", "torch-export") and asked:
        raise VisionLabError(
            f"--show-grid / --show-proposals: the {fmt} export of {name} holds the "
            "detections only; predict with its checkpoint to draw them"
        )
    extras = []
    if getattr(args, "show_grid", False):
        if "grid" not in supported:
            raise VisionLabError(f"--show-grid: {name} predicts no grid (YOLO models do)")
        extras.append("grid")  # eval outputs then carry grid_size and cells
    if getattr(args, "show_proposals", False):
        if "proposals" not in supported:
            raise VisionLabError(
                f"--show-proposals: {name} makes no region proposals (the R-CNN family does)"
            )
        extras.append("proposals")  # eval outputs then carry proposals [P, 4]
    return tuple(extras)


def _check_graph_constraint(off: bool, name: Any, task: str) -> None:
    """``--no-graph-constraint`` is for relation models; refused in one line elsewhere."""
    if off and task != "relation":
        raise VisionLabError(
            f"--no-graph-constraint: {name} predicts no relationships (relation models do: "
            "relation_rcnn, relation_freq)"
        )


def _out_dir(out: str | None, checkpoint: Path) -> Path:
    if out:
        return Path(out)
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "predictions"
    raise VisionLabError(f"{checkpoint} is not inside a run directory: give --out DIR")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from visionlab.engine.api import load, predict_stream, resolve_device
    from visionlab.engine.interrupt import EXIT_STATUS
    from visionlab.engine.streaming import collect_inputs, skipped_entry
    from visionlab.paths import ensure_output_dir

    out = _out_dir(args.out, Path(args.checkpoint))
    _check_out(out, args.inputs)
    inputs = collect_inputs(args.inputs, skip=out, every=args.every)
    _check_out(out, [str(f) for f in inputs.files])  # those a text file of paths names
    skipped = inputs.skipped
    if not inputs.files:
        raise VisionLabError(_nothing_readable(skipped))
    ensure_output_dir(out)  # a file, or a folder that cannot be made or written: one line
    for entry in skipped:
        _warn_skipped(entry)
    # batch norms folded into the convolutions: the same predictions, faster (ultralytics'
    # fuse() before predicting)
    model = load(args.checkpoint, resolve_device(args.device), fuse=True)
    extras = _extras(args, model)
    name = model.meta.get("model_name")
    _check_graph_constraint(args.no_graph_constraint, name, model.task)
    if args.save_txt:
        if model.task not in BOX_TASKS:
            raise VisionLabError(f"--save-txt: {name} predicts no boxes (detectors do)")
        ensure_output_dir(out / LABELS)
    outputs = PredictionWriter(
        out,
        model,
        save_images=args.save_images,
        save_txt=args.save_txt,
        every=args.every,
        max_relations=args.max_relations,
    )
    stream = predict_stream(
        model,
        inputs.files,
        topk=args.topk,
        score_threshold=args.score_threshold,
        batch_size=args.batch_size,
        device=args.device,
        extras=extras,
        graph_constraint=not args.no_graph_constraint,
        workers=args.workers,
        every=args.every,
    )
    interrupted = False
    try:
        for frame, pred in tqdm(
            stream, total=inputs.total, desc="predict", unit="image", leave=False
        ):
            if pred is None:  # the header read, the pixels do not: skipped too
                skipped.append(skipped_entry(frame.file, frame.error or "unreadable"))
                _warn_skipped(skipped[-1])
            else:
                outputs.add(frame, pred)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stream.close()  # stops the loader's worker processes
        outputs.close_video()
    if not interrupted and not outputs.count:
        raise VisionLabError(_nothing_readable(skipped))
    summary = outputs.finish(str(args.checkpoint), skipped)
    if interrupted:
        print(f"interrupted: {summary}")
        return EXIT_STATUS["SIGINT"]
    print(summary)
    return 0
