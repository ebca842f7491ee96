"""`visionlab predict CKPT IMAGE_OR_DIR... --out DIR`: predict images and draw the results.

Writes ``DIR/predictions.json`` (every image's predictions, in its own pixels: the top-k
classes, or boxes ``[x1, y1, x2, y2]`` with class and score, or a class-map PNG) and one
drawn PNG per image (segmentation adds the class map as a palette PNG). Detectors also write
``DIR/coco_results.json``, the detections as a COCO results list (``image_id``,
``category_id`` = the label 1..C, ``bbox`` ``[x, y, w, h]``, ``score``), which
``visionlab eval detections --gt GT.json --dt coco_results.json`` scores; ``image_id`` is
the file's stem as a number when it is all digits (COCO's ``000000000139.jpg`` is image 139),
else the file name. Instance models (Mask R-CNN) add to each detection, in both files,
``segmentation``: its mask as a COCO RLE (``size`` ``[H, W]`` of the image, ``counts`` a
string), scored by ``--iou-type segm``; their drawings give each instance its own colour
(mask filled translucent and outlined, box, class and score). Relation models add
``relations``, each ``{"subject": i, "predicate": NAME, "object": j, "score": s}`` (i, j
index the image's ``detections``; best first, one predicate per pair unless
``--no-graph-constraint``), and draw the numbered boxes with arrows from subject to object
beside the scene graph (``--max-relations`` drawn). Folders are searched
recursively for image files. Without ``--out``, a checkpoint inside a run directory
(``RUN/checkpoints/best.pt``) writes to ``RUN/predictions/``. ``--show-proposals`` (models
that return the extra ``"proposals"``: the R-CNN family) also writes ``NAME_proposals.png``
per image, the model's region proposals beside selective search's, and records only their
count in the JSON; ``--show-grid`` (the extra ``"grid"``: YOLO) draws the grid and records
each detection's cell. Both are asked of the model by argument (``visionlab.predict(...,
extras=...)``).

The user's files are safe: an ``--out`` that is an input folder or holds an input is
refused, and an ``--out`` inside an input folder is left out of that folder's search (a
second run does not predict the first one's drawings). A name already taken in ``DIR``
(``NAME.png``, ``predictions.json``, ...) is never overwritten: the new file becomes
``NAME_1.png``, ``predictions_1.json``, ... An ``--out`` that cannot be a writable folder is
reported before the model loads. An unreadable image is skipped with a warning naming it and
listed under ``skipped`` in the JSON; the run fails only when no input is readable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from torch import Tensor

from visionlab.constants import IGNORE_INDEX
from visionlab.errors import DataError, VisionLabError

# the files one record of predictions.json names (drawn image, palette mask, proposals)
PNG_KEYS = ("drawing", "semantic_png", "proposals_drawing")
COCO_RESULTS = "coco_results"  # DIR/coco_results.json: detections as a COCO results list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pt checkpoint or an exported folder")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="images or folders")
    parser.add_argument(
        "--out", help="output folder (default: RUN/predictions for a checkpoint in a run)"
    )
    parser.add_argument(
        "--topk", type=_positive_int, default=5, help="classes per image (classification)"
    )
    parser.add_argument(
        "--score-threshold",
        type=_unit_interval,
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
        type=_positive_int,
        default=20,
        help="relation models: relationships drawn per image (the JSON lists them all)",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=16)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def collect_images(
    inputs: list[str], *, skip: Path | None = None
) -> tuple[list[Path], list[dict[str, str]]]:
    """Image files named, or found (recursively, sorted) in the folders named, leaving out
    the folder ``skip`` (the output folder); every file's header is read first.

    Returns:
        The readable files, and ``{"file", "reason"}`` for each file whose header cannot be
        read (the caller skips those).

    Raises:
        DataError: an input that does not exist, or a folder without image files.
    """
    from visionlab.data.imageio import image_size, is_image_file

    skip = skip.resolve() if skip is not None else None
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if skip is not None and path.resolve() in skip.parents:
                found = [p for p in found if skip not in p.resolve().parents]
            if not found:
                raise DataError(path, "folder holds no image files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(path, "no such image file or folder")
    readable, unreadable = [], []
    for path in files:
        try:
            image_size(path)
        except DataError as err:
            unreadable.append(_skipped(path, err))
        else:
            readable.append(path)
    return readable, unreadable


def _skipped(path: Path, err: DataError) -> dict[str, str]:
    """The JSON entry of a skipped file: the file, and the error without the file's name."""
    return {"file": str(path), "reason": str(err).removeprefix(f"{err.path}: ")}


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
    first = skipped[0]
    more = f" (and {len(skipped) - 1} more unreadable files)" if len(skipped) > 1 else ""
    return f"no readable image to predict: {first['file']}: {first['reason']}{more}"


def _unique_path(out: Path, stem: str, used: set[str], suffix: str = ".png") -> Path:
    """``out/STEM.SUFFIX``, or ``STEM_1``, ``STEM_2``, ... when this run has used the name or
    ``out`` already holds it (a user's file, an earlier run's): nothing is overwritten."""
    name, n = f"{stem}{suffix}", 1
    while name in used or os.path.lexists(out / name):  # lexists: a dangling link is taken
        name, n = f"{stem}_{n}{suffix}", n + 1
    used.add(name)
    return out / name


def _record(
    path: Path,
    image: Tensor,
    pred: dict[str, Tensor],
    model: Any,
    out: Path,
    used: set[str],
    max_relations: int = 20,
) -> dict[str, Any]:
    from visionlab import viz

    classes = model.classes
    record: dict[str, Any] = {"file": str(path), "height": image.shape[1], "width": image.shape[2]}
    png = _unique_path(out, path.stem, used)
    if model.task == "classification":
        labels, scores = pred["labels"].tolist(), pred["scores"].tolist()
        record["top"] = [
            {"label": lab, "class": classes[lab] if lab < len(classes) else str(lab), "score": s}
            for lab, s in zip(labels, scores)
        ]
        drawing = viz.draw_classification(image, pred["labels"], pred["scores"], classes)
    elif model.task == "segmentation":
        semantic = pred["semantic"]
        mask_png = viz.semantic_to_palette_png(
            semantic, _unique_path(out, f"{png.stem}_mask", used)
        )
        present = [int(v) for v in semantic.unique().tolist() if v not in (0, IGNORE_INDEX)]
        record["semantic_png"] = mask_png.name
        record["classes_present"] = [classes[v - 1] for v in present if v - 1 < len(classes)]
        drawing = viz.draw_semantic(image, semantic, classes)
    elif "relations" in pred:
        record["detections"] = _detections(pred, classes)
        record["relations"] = _relations(pred, model.predicates)
        drawing = _relations_sheet(image, pred, model, max_relations)
    else:
        record["detections"] = _detections(pred, classes)
        drawing = viz.draw_detections(
            image,
            pred["boxes"],
            pred["labels"],
            pred["scores"],
            classes,
            pred.get("masks"),
            color_by="instance" if "masks" in pred else "class",
        )
        if "grid_size" in pred:  # --show-grid on a grid model: plain numbers only in JSON
            record["grid_size"] = int(pred["grid_size"])
            for det, cell in zip(record["detections"], pred["cells"].tolist()):
                det["cell"] = [int(v) for v in cell]
            drawing = viz.draw_grid(
                image,
                record["grid_size"],
                pred["cells"],
                boxes=pred["boxes"],
                labels=pred["labels"],
                class_names=classes,
                min_size=384,  # small images: the grid lines and labels need the room
            )
    drawing.save(png)
    record["drawing"] = png.name
    if "proposals" in pred:  # --show-proposals: a PNG, and a count (never the raw tensor)
        record["num_proposals"] = len(pred["proposals"])
        sheet = _proposals_sheet(image, pred["proposals"], model)
        proposals_png = _unique_path(out, f"{png.stem}_proposals", used)
        sheet.save(proposals_png)
        record["proposals_drawing"] = proposals_png.name
    return record


def _relations(pred: dict[str, Tensor], predicates: list[str]) -> list[dict[str, Any]]:
    """One JSON entry per triplet, best first: ``subject`` and ``object`` index the image's
    ``detections``; ``predicate`` is the name."""
    scores = pred.get("relation_scores")
    out = []
    for k, (s, p, o) in enumerate(pred["relations"].reshape(-1, 3).tolist()):
        name = predicates[p] if 0 <= p < len(predicates) else str(p)
        score = round(float(scores[k]), 5) if scores is not None else None
        out.append({"subject": s, "predicate": name, "object": o, "score": score})
    return out


def _relations_sheet(image: Tensor, pred: dict[str, Tensor], model: Any, limit: int) -> Any:
    """The image with numbered boxes and arrows from subject to object (labelled with the
    predicate), beside the scene graph of the same relationships."""
    from visionlab import viz

    common = {
        "class_names": model.classes,
        "predicate_names": model.predicates,
        "relation_scores": pred.get("relation_scores"),
        "max_relations": limit,
    }
    arrows = viz.draw_relations(
        image,
        pred["boxes"],
        pred["relations"],
        labels=pred["labels"],
        number_boxes=True,
        min_size=384,
        **common,
    )
    graph = viz.draw_scene_graph(pred["labels"], pred["relations"], size=arrows.height, **common)
    return viz.image_grid([arrows, graph], cols=2)


def _proposals_sheet(image: Tensor, proposals: Tensor, model: Any) -> Any:
    """The model's proposals (best first) beside selective search's for the same image."""
    from visionlab import viz
    from visionlab.ops import selective_search

    theirs = selective_search(image, "fast", max_boxes=2000)
    name = getattr(model, "meta", {}).get("model_name", "model")
    panels = [
        viz.draw_proposals(image, proposals, max_boxes=100, min_size=256),
        viz.draw_proposals(image, theirs, max_boxes=100, min_size=256),
    ]
    titles = [f"{name}: {len(proposals)}", f"selective search: {len(theirs)}"]
    return viz.image_grid(panels, cols=2, titles=titles)


def _detections(pred: dict[str, Tensor], classes: list[str]) -> list[dict[str, Any]]:
    """One JSON entry per detection: ``box``, ``label``, ``class``, ``score`` and, with
    ``masks`` (``[N, H, W]`` or ``[N, 1, H, W]``), ``segmentation`` (COCO RLE, text counts)."""
    rles = None
    if "masks" in pred:
        from visionlab.data.records import encode_masks

        masks = pred["masks"]
        rles = encode_masks(masks.reshape(-1, *masks.shape[-2:]))
    out = []
    for i, (box, lab, score) in enumerate(
        zip(pred["boxes"].tolist(), pred["labels"].tolist(), pred["scores"].tolist())
    ):
        det = {
            "box": [round(v, 2) for v in box],
            "label": lab,
            "class": classes[lab - 1] if 0 < lab <= len(classes) else str(lab),
            "score": round(score, 5),
        }
        if rles is not None:
            det["segmentation"] = rles[i]
        out.append(det)
    return out


def _coco_results(record: dict[str, Any]) -> list[dict[str, Any]]:
    """An image's detections as COCO results (``bbox`` ``[x, y, w, h]``, ``segmentation``
    when the model makes masks), ``image_id`` from the file name (see the module's text)."""
    name = Path(record["file"]).name
    stem = Path(name).stem
    image_id: int | str = int(stem) if stem.isascii() and stem.isdigit() else name
    results = []
    for det in record["detections"]:
        x1, y1, x2, y2 = det["box"]
        result = {
            "image_id": image_id,
            "category_id": det["label"],
            "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": det["score"],
        }
        if "segmentation" in det:
            result["segmentation"] = det["segmentation"]
        results.append(result)
    return results


def _extras(args: argparse.Namespace, model: Any) -> tuple[str, ...]:
    """The extras ``--show-grid`` / ``--show-proposals`` ask of the model; one it does not
    make is refused in one line naming the models that make it."""
    from visionlab.models.detector import supported_extras

    supported, name = supported_extras(model), model.meta.get("model_name")
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

    from visionlab.data.imageio import load_image
    from visionlab.engine.api import load, predict, resolve_device
    from visionlab.engine.checkpoint import atomic_write
    from visionlab.paths import ensure_output_dir

    out = _out_dir(args.out, Path(args.checkpoint))
    _check_out(out, args.inputs)
    files, skipped = collect_images(args.inputs, skip=out)
    if not files:
        raise VisionLabError(_nothing_readable(skipped))
    ensure_output_dir(out)  # a file, or a folder that cannot be made or written: one line
    for entry in skipped:
        _warn_skipped(entry)
    # batch norms folded into the convolutions: the same predictions, faster (ultralytics'
    # fuse() before predicting)
    model = load(args.checkpoint, resolve_device(args.device), fuse=True)
    extras = _extras(args, model)
    _check_graph_constraint(args.no_graph_constraint, model.meta.get("model_name"), model.task)
    records: list[dict[str, Any]] = []
    used: set[str] = set()
    for start in tqdm(
        range(0, len(files), args.batch_size), desc="predict", unit="batch", leave=False
    ):
        chunk, images = [], []
        for path in files[start : start + args.batch_size]:
            try:
                images.append(load_image(path))
            except DataError as err:  # the header read, the pixels do not: skip it too
                skipped.append(_skipped(path, err))
                _warn_skipped(skipped[-1])
            else:
                chunk.append(path)
        if not images:
            continue
        preds = predict(
            model,
            images,
            topk=args.topk,
            score_threshold=args.score_threshold,
            device=args.device,
            extras=extras,
            graph_constraint=not args.no_graph_constraint,
        )
        for path, image, pred in zip(chunk, images, preds):
            records.append(_record(path, image, pred, model, out, used, args.max_relations))
    if not records:
        raise VisionLabError(_nothing_readable(skipped))
    payload = {
        "checkpoint": str(args.checkpoint),
        "task": model.task,
        "classes": model.classes,
        "predictions": records,
        "skipped": skipped,
    }
    text = json.dumps(payload, indent=2)
    json_path = _unique_path(out, "predictions", used, ".json")
    atomic_write(json_path, lambda f: f.write(text.encode("utf-8")))
    written = str(json_path)
    if all("detections" in r for r in records):
        results = json.dumps([res for r in records for res in _coco_results(r)])
        coco_path = _unique_path(out, COCO_RESULTS, used, ".json")
        atomic_write(coco_path, lambda f: f.write(results.encode("utf-8")))
        written += f", {coco_path.name}"
    pngs = sum(1 for r in records for key in PNG_KEYS if key in r)
    summary = f"{len(records)} images predicted: {written} and {pngs} PNGs in {out}"
    if skipped:
        summary += f"; {len(skipped)} unreadable file{'s' if len(skipped) > 1 else ''} skipped"
    print(summary)
    return 0
