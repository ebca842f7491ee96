"""What `visionlab predict` writes, as it goes: one JSON record per image (the model's
prediction in the image's own pixels), drawings, YOLO label files and annotated videos, and
at the end ``predictions.json`` and ``coco_results.json`` (the layout is described in
:mod:`visionlab.engine.commands_predict`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from visionlab.constants import BOX_TASKS, IGNORE_INDEX
from visionlab.engine.streaming import Frame

# the files one record of predictions.json names (drawn image, palette mask, proposals)
PNG_KEYS = ("drawing", "semantic_png", "proposals_drawing")
COCO_RESULTS = "coco_results"  # DIR/coco_results.json: detections as a COCO results list
LABELS = "labels"  # DIR/labels/NAME.txt: --save-txt
DEFAULT_FPS = 25.0  # an annotated video's rate when its source states none


def _unique_path(out: Path, stem: str, used: set[str], suffix: str = ".png") -> Path:
    """``out/STEM.SUFFIX``, or ``STEM_1``, ``STEM_2``, ... when this run has used the name or
    ``out`` already holds it (a user's file, an earlier run's): nothing is overwritten."""
    return out / f"{_free_stem(out, stem, used, (suffix,))}{suffix}"


def _free_stem(out: Path, stem: str, used: set[str], suffixes: tuple[str, ...]) -> str:
    """The first of ``stem``, ``stem_1``, ... free with every one of ``suffixes`` (so that
    ``predictions_1.jsonl`` and ``predictions_1.json`` go together); marks them used."""
    name, n = stem, 1
    # lexists: a dangling link is taken
    while any(f"{name}{s}" in used or os.path.lexists(out / f"{name}{s}") for s in suffixes):
        name, n = f"{stem}_{n}", n + 1
    used.update(f"{name}{s}" for s in suffixes)
    return name


def render_prediction(
    image: Tensor,
    pred: dict[str, Tensor],
    model: Any,
    *,
    name: str,
    draw: bool = True,
    max_relations: int = 20,
) -> tuple[dict[str, Any], Any]:
    """One image's JSON record (``name`` is its ``file``) and, with ``draw``, its drawing (a
    PIL image), as ``visionlab predict`` makes them; no file is written (the web app shows
    them as they are)."""
    from visionlab import viz

    classes = model.classes
    record: dict[str, Any] = {"file": name, "height": image.shape[1], "width": image.shape[2]}
    drawing = None
    if model.task == "classification":
        labels, scores = pred["labels"].tolist(), pred["scores"].tolist()
        record["top"] = [
            {"label": lab, "class": classes[lab] if lab < len(classes) else str(lab), "score": s}
            for lab, s in zip(labels, scores)
        ]
        if draw:
            drawing = viz.draw_classification(image, pred["labels"], pred["scores"], classes)
    elif model.task == "segmentation":
        semantic = pred["semantic"]
        present = [int(v) for v in semantic.unique().tolist() if v not in (0, IGNORE_INDEX)]
        record["classes_present"] = [classes[v - 1] for v in present if v - 1 < len(classes)]
        if draw:
            drawing = viz.draw_semantic(image, semantic, classes)
    elif "relations" in pred:
        record["detections"] = _detections(pred, classes)
        record["relations"] = _relations(pred, model.predicates)
        if draw:
            drawing = _relations_sheet(image, pred, model, max_relations)
    else:
        record["detections"] = _detections(pred, classes)
        if "grid_size" in pred:  # --show-grid on a grid model: plain numbers only in JSON
            record["grid_size"] = int(pred["grid_size"])
            for det, cell in zip(record["detections"], pred["cells"].tolist()):
                det["cell"] = [int(v) for v in cell]
        if draw and "grid_size" in pred:
            drawing = viz.draw_grid(
                image,
                record["grid_size"],
                pred["cells"],
                boxes=pred["boxes"],
                labels=pred["labels"],
                class_names=classes,
            )
        elif draw:
            drawing = viz.draw_detections(
                image,
                pred["boxes"],
                pred["labels"],
                pred["scores"],
                classes,
                pred.get("masks"),
                color_by="instance" if "masks" in pred else "class",
            )
    return record, drawing


def _record(
    path: Path,
    image: Tensor,
    pred: dict[str, Tensor],
    model: Any,
    out: Path,
    used: set[str],
    *,
    stem: str,
    draw: bool = True,
    png: bool = True,
    max_relations: int = 20,
) -> tuple[dict[str, Any], Any]:
    """:func:`render_prediction` with its files in ``out`` (``stem`` names them): the drawing
    as ``STEM.png`` with ``draw`` and ``png``; the class map of segmentation and the
    ``--show-proposals`` sheet either way."""
    from visionlab import viz

    record, drawing = render_prediction(
        image, pred, model, name=str(path), draw=draw, max_relations=max_relations
    )
    drawn = _unique_path(out, stem, used) if draw and png else None
    stem = drawn.stem if drawn is not None else stem
    if model.task == "segmentation":
        mask_path = _unique_path(out, f"{stem}_mask", used)
        record["semantic_png"] = viz.semantic_to_palette_png(pred["semantic"], mask_path).name
    if drawn is not None:
        drawing.save(drawn)
        record["drawing"] = drawn.name
    if "proposals" in pred:  # --show-proposals: a PNG, and a count (never the raw tensor)
        record["num_proposals"] = len(pred["proposals"])
        sheet = _proposals_sheet(image, pred["proposals"], model)
        proposals_png = _unique_path(out, f"{stem}_proposals", used)
        sheet.save(proposals_png)
        record["proposals_drawing"] = proposals_png.name
    return record, drawing


def _yolo_txt(record: dict[str, Any]) -> str:
    """A record's detections as YOLO label lines ``class cx cy w h conf``."""
    from visionlab.data.yolo import box_line

    h, w = record["height"], record["width"]
    return "".join(
        box_line(det["label"] - 1, det["box"], w, h, det["score"]) for det in record["detections"]
    )


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
        viz.draw_proposals(image, proposals, max_boxes=100),
        viz.draw_proposals(image, theirs, max_boxes=100),
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
    if "frame" in record:  # a video's frames: one image each
        image_id = f"{name}#{record['frame']}"
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


class PredictionWriter:
    """What one run writes in ``out``, as it goes: the journal ``predictions.jsonl`` (one
    record a line, flushed at once), drawings, YOLO label files and annotated videos; at
    the end (or at Ctrl-C) ``predictions.json`` and ``coco_results.json`` from the journal.
    No name already taken in ``out`` is written over."""

    def __init__(
        self,
        out: Path,
        model: Any,
        *,
        save_images: bool = True,
        save_txt: bool = False,
        every: int = 1,
        max_relations: int = 20,
    ) -> None:
        self.out, self.model = out, model
        self.save_images, self.save_txt = save_images, save_txt
        self.every, self.max_relations = every, max_relations
        self.used: set[str] = set()
        self.stem = _free_stem(out, "predictions", self.used, (".json", ".jsonl"))
        self.journal = out / f"{self.stem}.jsonl"
        self._journal: Any = None  # opened at the first record
        self.labels_used: set[str] = set()
        self.count = self.txts = 0
        self.videos: list[str] = []
        self._video: tuple[Path, Any, tuple[int, int]] | None = None  # file, writer, size

    def add(self, frame: Frame, pred: dict[str, Tensor]) -> None:
        in_video = frame.frame is not None
        stem = f"{frame.file.stem}_{frame.frame:06d}" if in_video else frame.file.stem
        record, drawing = _record(
            frame.file,
            frame.image,
            pred,
            self.model,
            self.out,
            self.used,
            stem=stem,
            draw=self.save_images,
            png=not in_video,  # a video's frames are drawn into NAME_pred.mp4 instead
            max_relations=self.max_relations,
        )
        if in_video:
            record["frame"], record["time_s"] = frame.frame, frame.time_s
            if drawing is not None:
                record["video"] = self._write_frame(frame, drawing)
        if self.save_txt:
            txt = _unique_path(self.out / LABELS, stem, self.labels_used, ".txt")
            txt.write_text(_yolo_txt(record), encoding="utf-8")
            record["txt"] = f"{LABELS}/{txt.name}"
            self.txts += 1
        if self._journal is None:
            self._journal = self.journal.open("x", encoding="utf-8")
        self._journal.write(json.dumps(record) + "\n")
        self._journal.flush()
        self.count += 1

    def _write_frame(self, frame: Frame, drawing: Any) -> str:
        """Append ``drawing`` to the annotated copy of the frame's video (opened at its
        first frame, at the video's rate divided by ``every``); returns the copy's name."""
        import cv2
        import numpy as np

        from visionlab.engine.streaming import video_fps

        video = frame.file
        # frame 0 starts a video again (one given twice is drawn twice)
        if self._video is None or self._video[0] != video or frame.frame == 0:
            self.close_video()
            path = _unique_path(self.out, f"{video.stem}_pred", self.used, ".mp4")
            fps = (video_fps(video) or DEFAULT_FPS) / self.every
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, drawing.size)
            self._video = (video, writer, drawing.size)
            self.videos.append(path.name)
        _, writer, size = self._video
        if drawing.size != size:  # the first frame fixed the size of the video
            drawing = drawing.resize(size)
        writer.write(cv2.cvtColor(np.asarray(drawing.convert("RGB")), cv2.COLOR_RGB2BGR))
        return self.videos[-1]

    def close_video(self) -> None:
        if self._video is not None:
            self._video[1].release()  # writes the index: the file plays from here on
            self._video = None

    def records(self) -> list[dict[str, Any]]:
        """The journal's records (a last line cut short by a kill is left out)."""
        if not self.journal.exists():
            return []
        records = []
        for line in self.journal.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def finish(self, checkpoint: str, skipped: list[dict[str, str]]) -> str:
        """Write ``predictions.json`` (and the COCO results) from the journal, remove the
        journal, and return the summary line."""
        from visionlab.engine.checkpoint import atomic_write

        self.close_video()
        if self._journal is not None:
            self._journal.close()
        records = self.records()
        payload = {
            "checkpoint": checkpoint,
            "task": self.model.task,
            "classes": self.model.classes,
            "predictions": records,
            "skipped": skipped,
        }
        text = json.dumps(payload, indent=2)
        json_path = self.out / f"{self.stem}.json"
        atomic_write(json_path, lambda f: f.write(text.encode("utf-8")))
        self.journal.unlink(missing_ok=True)
        written = [str(json_path)]
        if self.model.task in BOX_TASKS:
            results = json.dumps([res for r in records for res in _coco_results(r)])
            coco_path = _unique_path(self.out, COCO_RESULTS, self.used, ".json")
            atomic_write(coco_path, lambda f: f.write(results.encode("utf-8")))
            written[0] += f", {coco_path.name}"
        written.append(f"{sum(1 for r in records for key in PNG_KEYS if key in r)} PNGs")
        if self.videos:
            written.append(_count(len(self.videos), "annotated video"))
        if self.txts:
            written.append(f"{_count(self.txts, 'label file')} ({LABELS}/)")
        listed = ", ".join(written[:-1]) + " and " + written[-1]
        summary = f"{len(records)} images predicted: {listed} in {self.out}"
        if skipped:
            summary += f"; {_count(len(skipped), 'unreadable file')} skipped"
        return summary


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'s' if n != 1 else ''}"
