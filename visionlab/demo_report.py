"""The demo's results: one table of the metrics its runs measured and ``OUT/report.md``.

Every number is read from a run folder the demo trained: the metrics and training time from
``RUN/eval.json`` (the end-of-training evaluation), the model from ``RUN/config.yaml`` and
the pictures from ``RUN/predictions/predictions.json`` (the PNGs `visionlab predict` drew).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (task, demo step, metric keys of its eval.json, picture key of its predictions.json,
# whether that picture goes into the overview sheet)
TASK_ROWS: tuple[tuple[str, str, tuple[str, ...], str, bool], ...] = (
    ("classification", "classify", ("top1",), "drawing", True),
    ("detection", "faster_rcnn", ("AP", "AP50"), "drawing", True),
    ("detection", "mask_rcnn", ("AP", "AP50"), "proposals_drawing", False),
    ("semantic segmentation", "fcn", ("mIoU",), "drawing", True),
    ("instance segmentation", "mask_rcnn", ("mask_AP", "mask_AP50"), "drawing", True),
    ("relationships", "relations", ("relationship_R@50", "predicate_R@50"), "drawing", True),
)
# an image with this many objects found (or more) is picture enough; more is clutter
ENOUGH_OBJECTS = 5
COLUMNS = ("task", "model", "metric", "value", "train + eval (s)")
OVERVIEW = "overview.png"


@dataclass
class Row:
    """One measured metric of one task; ``picture``: a drawn PNG, relative to the demo's out."""

    task: str
    model: str
    metric: str
    value: float
    seconds: float | None
    picture: str | None = None
    overview: bool = True


def _predictions(folder: Path) -> list[dict[str, Any]]:
    """The records of ``folder/predictions.json`` (none when it is missing or unreadable)."""
    try:
        data = json.loads((folder / "predictions.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    records = data.get("predictions") if isinstance(data, dict) else None
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def _model_name(run_dir: Path) -> str:
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return run_dir.name
    return str(cfg.get("model", run_dir.name)) if isinstance(cfg, dict) else run_dir.name


def _picture(out: Path, run_dir: Path, key: str) -> str | None:
    """The drawing under ``key`` (falling back to ``drawing``) of the first image with the
    most objects found (classes present or detections, up to :data:`ENOUGH_OBJECTS`),
    relative to ``out``; None when the run drew nothing."""
    predictions = run_dir / "predictions"
    best, most = None, -1
    for record in _predictions(predictions):
        name = record.get(key) or record.get("drawing")
        found = min(
            ENOUGH_OBJECTS, sum(len(record.get(k) or []) for k in ("classes_present", "detections"))
        )
        if name and found > most and (predictions / name).is_file():
            best, most = (predictions / name).relative_to(out).as_posix(), found
    return best


def collect_rows(out: Path, folders: dict[str, str]) -> list[Row]:
    """The table's rows for the steps that ran (``folders``: step -> run folder under
    ``out``), in the order of :data:`TASK_ROWS`; a run without ``eval.json`` is left out."""
    from visionlab.bench.runs import recorded_metrics, recorded_training

    out = Path(out)
    rows = []
    for task, step, keys, picture_key, overview in TASK_ROWS:
        if step not in folders:
            continue
        run_dir = out / folders[step]
        metrics = recorded_metrics(run_dir) or {}
        seconds: float | None = recorded_training(run_dir)[0]
        if seconds is not None and math.isnan(seconds):
            seconds = None
        model = _model_name(run_dir)
        picture = _picture(out, run_dir, picture_key)
        for key in keys:
            if isinstance(metrics.get(key), int | float):
                value = float(metrics[key])
                rows.append(Row(task, model, key, value, seconds, picture, overview))
    return rows


def _cells(row: Row) -> list[str]:
    seconds = "" if row.seconds is None else f"{row.seconds:.0f}"
    return [row.task, row.model, row.metric, f"{row.value:.3f}", seconds]


def format_table(rows: list[Row]) -> str:
    """The rows as an aligned plain-text table (what the demo prints)."""
    cells = [list(COLUMNS), *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    numeric = (False, False, False, True, True)

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])


def markdown_table(rows: list[Row]) -> str:
    """The rows as a Markdown table (the report's and the README's)."""
    from visionlab.bench.machine import row

    lines = [row(*COLUMNS), "|---|---|---|---:|---:|", *(row(*_cells(r)) for r in rows)]
    return "\n".join(lines)


def schedule_notes(overrides: dict[str, tuple[str, list[str]]]) -> str:
    """One phrase per step (``step -> (recipe, demo overrides)``): the demo's schedule
    against the recipe's, e.g. ``classify 3 epochs (recipe 10)``."""
    from visionlab.config import load_config

    phrases = []
    for step, (recipe, extra) in overrides.items():
        full, short = load_config(recipe).train, load_config(recipe, extra).train
        if short.max_steps is not None:
            mine = f"{short.max_steps} steps"
        else:
            mine = f"{short.epochs} epochs"
        phrases.append(f"{step} {mine} (recipe {full.epochs} epochs)")
    return ", ".join(phrases)


def write_overview(out: Path, rows: list[Row], *, height: int = 384) -> Path | None:
    """``OUT/overview.png``: the tasks' pictures (those marked for it) in a 2-column sheet,
    each scaled to ``height`` pixels; None when no run drew anything."""
    from PIL import Image

    from visionlab.viz import image_grid

    panels, titles, seen = [], [], set()
    for row in rows:
        if row.picture is None or row.picture in seen or not row.overview:
            continue
        seen.add(row.picture)
        with Image.open(out / row.picture) as im:
            image = im.convert("RGB")
        width = max(1, round(image.width * height / image.height))
        panels.append(image.resize((width, height), Image.Resampling.LANCZOS))
        titles.append(f"{row.task}: {row.model}")
    if not panels:
        return None
    path = out / OVERVIEW
    image_grid(panels, cols=2, titles=titles).save(path, optimize=True)
    return path


def write_report(out: Path, rows: list[Row], notes: str, *, minutes: float) -> Path:
    """``OUT/report.md``: the table, the schedules, then each task's picture (relative links
    to the PNGs the steps drew), and ``OUT/overview.png``."""
    out = Path(out)
    overview = write_overview(out, rows)
    lines = [
        "# visionlab demo: the four tasks on the scenes data",
        "",
        f"Measured by `visionlab demo` on the scenes val split in {minutes:.1f} min "
        f"(short schedules: {notes}; the recipes' full schedules are what the benchmarks "
        "measure).",
        "",
        markdown_table(rows),
        "",
    ]
    if overview is not None:
        lines += [f"![the four tasks]({overview.name})", ""]
    seen = set()
    for row in rows:
        if row.picture is None or row.picture in seen:
            continue
        seen.add(row.picture)
        lines += [f"## {row.task}: {row.model}", "", f"![{row.task}]({row.picture})", ""]
    samples = sorted((out / "samples").glob("0*.png"))
    if samples:
        rel = samples[0].relative_to(out).as_posix()
        lines += ["## the data: boxes, masks, classes, relationships", "", f"![samples]({rel})", ""]
    path = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    from visionlab.engine.checkpoint import atomic_write

    text = "\n".join(lines).encode("utf-8")
    atomic_write(path, lambda f: f.write(text))
    return path
