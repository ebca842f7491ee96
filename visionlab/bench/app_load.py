"""The web app under load, a section of ``bench predict``: ``visionlab app`` served on
localhost with two families' models, and 32 concurrent requests to its ``/predict``
endpoint from the bounded client of :mod:`visionlab.app.loadtest`, per model; every request
answered (none lost), p50 / p95 latency from send to answer."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from visionlab.bench.machine import row

FAMILIES = ("classifier", "Faster R-CNN")  # a stacked-batch model and a detector
SIZE = 128  # the scenes images' size
REQUESTS = 32
PORT = 7899


def steps(args: argparse.Namespace) -> int:
    return len(FAMILIES)


def run(args: argparse.Namespace, bar: Any, build_family: Callable) -> list[str]:
    """The section's Markdown lines; ``build_family`` is :mod:`visionlab.bench.predict`'s
    (the same models as its throughput)."""
    from PIL import Image

    from visionlab.app import serve
    from visionlab.app.loadtest import load_test
    from visionlab.app.ui import CONCURRENT
    from visionlab.data.scenes_draw import render_scene

    requests = 8 if args.quick else REQUESTS
    checkpoints = Path(args.checkpoints) if args.checkpoints else None
    results = []
    with tempfile.TemporaryDirectory(prefix="visionlab-bench-app-") as tmp:
        image = Path(tmp) / "scene.png"
        Image.fromarray(render_scene(SIZE, 0, "val", 0).image).save(image)
        models = Path(tmp) / "models"
        labels = {}
        for family in FAMILIES:
            path, source = build_family(family, SIZE, models, checkpoints)
            labels[family] = (str(path.relative_to(models)), source)
        torch.set_num_threads(args.threads)
        with serve([models], port=PORT) as url:
            for family, (label, source) in labels.items():
                bar.set_description(f"app load test: {family}")
                report = load_test(url, label, image, requests=requests, concurrency=requests)
                results.append((family, source, report))
                bar.update(1)
    lines = [
        "## Web app load test",
        "",
        f"- `visionlab app` on localhost (Gradio; {CONCURRENT} predictions at a time, the "
        f"others queued), {args.threads} torch thread(s); per model {requests} requests "
        f"sent at once from a bounded client (`visionlab.app.loadtest`: at most {requests} in "
        "flight, 300 s timeout each), each uploading the same scenes image "
        f"({SIZE} x {SIZE} PNG) and waiting for the JSON record; latency from send to answer, "
        "so it includes the queue.",
        "",
        "| model | weights | sent | answered | lost | refused | p50 ms | p95 ms | max ms "
        "| wall s | requests/s |",
        "|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for family, source, r in results:
        lines.append(
            row(
                family, source, r["sent"], r["answered"], r["lost"], r["refused"],
                f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", f"{r['max_ms']:.0f}",
                f"{r['wall_s']:.1f}", f"{r['answered'] / r['wall_s']:.1f}",
            )
        )  # fmt: skip
    lost = sum(r["lost"] + r["refused"] for _, _, r in results)
    verdict = "every request answered" if lost == 0 else f"**{lost} requests lost or refused**"
    return [*lines, "", f"Result: {verdict}.", ""]
