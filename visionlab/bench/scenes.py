"""Scenes rendering speed: images/s of the built-in dataset generator, by worker count,
in memory and writing the files. Writes ``OUT_DIR/scenes.md`` and ``OUT_DIR/scenes_samples.png``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from visionlab.bench.machine import comma_list, header, load_average, load_line, row, write_markdown
from visionlab.data.scenes import PREDICATES, SCENE_CLASSES, render_scenes, render_split
from visionlab.data.scenes_draw import render_scene
from visionlab.errors import VisionLabError

TARGET_IMAGES_PER_S = 500  # on 2 workers (the target)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=2000, help="images per measurement")
    parser.add_argument("--size", type=int, default=128, help="image side in px")
    parser.add_argument(
        "--workers", default="1,2", help="comma-separated worker counts to measure (1,2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--samples", type=int, default=8, help="scenes in the sample picture")
    parser.add_argument(
        "--tmp-dir", default=None, help="where the timed datasets are written (system temp)"
    )


def _measure(
    files: bool, n: int, size: int, seed: int, workers: int, scratch: Path
) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of this process (all of the work when workers is 1).

    With ``files`` the dataset goes to a new folder under ``scratch``, deleted after the
    clock stops (deleting thousands of files costs as much as writing them)."""
    out = Path(tempfile.mkdtemp(prefix="scenes-", dir=scratch)) / "ds"
    wall, cpu = time.perf_counter(), time.process_time()
    if files:
        render_scenes(
            out, n_train=n, n_val=0, size=size, seed=seed, workers=workers, progress=False
        )
    else:
        render_split("train", n, size=size, seed=seed, workers=workers)
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    shutil.rmtree(out.parent, ignore_errors=True)
    return seconds, cpu_seconds


def _sample_picture(path: Path, count: int, size: int, seed: int) -> None:
    """Top row: the images; bottom row: instance masks tinted, boxes and class names."""
    scale = max(1, 256 // size)
    tiles_top, tiles_bottom = [], []
    palette = np.random.default_rng(1).integers(60, 256, (16, 3)).astype(np.uint8)
    white_on_black = {"fill": (255, 255, 255), "stroke_width": 1, "stroke_fill": (0, 0, 0)}
    for index in range(count):
        scene = render_scene(size, seed, "train", index)
        ids = scene.instance_map
        overlay = scene.image.copy()
        shown = ids > 0
        tint = palette[(ids[shown] - 1) % len(palette)]
        overlay[shown] = (0.45 * overlay[shown] + 0.55 * tint).astype(np.uint8)
        big = Image.fromarray(overlay).resize((size * scale,) * 2, Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(big)
        for obj in scene.objects:
            x1, y1, x2, y2 = (v * scale for v in obj.box)
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=(255, 255, 255))
            label = f"{SCENE_CLASSES[obj.category]} {obj.color}"
            draw.text((x1 + 2, y1 + 1), label, **white_on_black)
        counts = f"{len(scene.objects)} objects, {len(scene.relations)} relations"
        draw.text((4, size * scale - 14), counts, **white_on_black)
        plain = Image.fromarray(scene.image).resize((size * scale,) * 2, Image.Resampling.NEAREST)
        tiles_top.append(np.asarray(plain))
        tiles_bottom.append(np.asarray(big))
    grid = np.concatenate([np.concatenate(tiles_top, 1), np.concatenate(tiles_bottom, 1)], 0)
    Image.fromarray(grid).save(path)


def run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    worker_counts = comma_list(args.workers, "--workers", int)
    if not worker_counts or args.n < 1 or args.samples < 1:
        raise VisionLabError("--n, --samples and every --workers count must be at least 1")
    scratch = Path(args.tmp_dir) if args.tmp_dir else Path(tempfile.gettempdir())
    if not scratch.is_dir():
        raise VisionLabError(f"--tmp-dir: {scratch} is not a folder")
    load_before = load_average()
    rows = []
    for workers in worker_counts:
        for files in (False, True):
            seconds, cpu = _measure(files, args.n, args.size, args.seed, workers, scratch)
            cpu_ms = 1000 * cpu / args.n if workers == 1 else None
            rows.append((workers, files, args.n, seconds, args.n / seconds, cpu_ms))
            print(f"workers={workers} files={files}: {args.n / seconds:.0f} images/s")
    load = load_line(load_before, load_average())
    lines = [
        header("Scenes rendering"),
        f"Rendering {args.n} training images of {args.size} x {args.size} px (seed "
        f"{args.seed}) with every annotation: boxes, classes, colours, visible instance "
        f'masks (RLE), relationships ({len(PREDICATES)} predicates). "files" also writes '
        "the PNGs, the classification crops and the COCO JSON, as `visionlab data scenes` "
        f"does, into `{scratch}`. Each pooled run starts its own process pool (included in "
        "the time); deleting the files is not timed. CPU "
        "ms/image is the CPU time of the single-process runs (drawing, encoding and the "
        "file system calls): it depends much less than wall time on other work sharing "
        "the machine.",
        "",
        load,
        "",
        "| workers | files | images | seconds | images/s | CPU ms/image |",
        "|--------:|:-----:|-------:|--------:|---------:|-------------:|",
    ]
    for workers, files, n, seconds, rate, cpu_ms in rows:
        cpu_text = "" if cpu_ms is None else f"{cpu_ms:.2f}"
        yes = "yes" if files else "no"
        lines.append(row(workers, yes, n, f"{seconds:.2f}", f"{rate:.0f}", cpu_text))
    single = [cpu for workers, files, _, _, _, cpu in rows if workers == 1 and files]
    lines.append("")
    if single:
        lines.append(
            f"From the CPU time, two idle cores would render up to about "
            f"{2000 / single[0]:.0f} images/s with files (2 x 1000 / CPU ms per image, "
            "assuming perfect scaling)."
        )
        lines.append("")
    for files, what in (
        (False, "rendering with every annotation, in memory"),
        (True, "rendering and writing the files (PNGs, crops, JSON)"),
    ):
        rate = [r for workers, f, _, _, r, _ in rows if workers == 2 and f == files]
        if rate:
            verdict = "met" if rate[0] >= TARGET_IMAGES_PER_S else "NOT met"
            lines.append(
                f"- Target {TARGET_IMAGES_PER_S} images/s on 2 workers, {what}: "
                f"{rate[0]:.0f} images/s, {verdict}."
            )
    lines.append(
        "\nWall-clock rates are only as good as the share of the cores this run got (see "
        "the load average above)."
    )
    lines += ["", "Samples: `scenes_samples.png` (top: images; bottom: masks, boxes, classes).", ""]
    png = out_dir / "scenes_samples.png"
    _sample_picture(png, args.samples, args.size, args.seed)
    write_markdown(out_dir, "scenes.md", lines, png)
    return 0
