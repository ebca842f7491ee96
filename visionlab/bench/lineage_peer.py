"""The peer row of ``visionlab bench lineage``: an Ultralytics YOLO trained on the same split,
image size and wall-clock budget as our YOLO v1, scored by our evaluator.

Ultralytics (AGPL) lives in ``.venv-peers`` (``make peers``) and runs as a subprocess
(:mod:`visionlab.bench.ultralytics_driver`); nothing here imports it. Every download it could
attempt is stopped: ``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=0``, a private
``YOLO_CONFIG_DIR`` (the driver turns ``sync`` off), a ``*.yaml`` model and a local TTF copied
in as its ``Arial.ttf`` (its font check ignores the offline flag).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

DRIVER = Path(__file__).with_name("ultralytics_driver.py")


def peer_env(python: Path, config_dir: Path, threads: int) -> dict[str, str]:
    """The environment the peer runs in: offline, its own config folder (with a local font
    as ``Arial.ttf``), ``threads`` CPU threads, no GPU."""
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    settings_dir = config_dir / "Ultralytics"
    settings_dir.mkdir(parents=True, exist_ok=True)
    for folder in (config_dir, settings_dir):  # where its versions look for the font
        if font.is_file() and not (folder / "Arial.ttf").is_file():
            shutil.copyfile(font, folder / "Arial.ttf")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "VIRTUAL_ENV"))}
    env.update(
        {
            "YOLO_OFFLINE": "1",
            "YOLO_AUTOINSTALL": "0",
            "YOLO_CONFIG_DIR": str(config_dir),
            "YOLO_VERBOSE": "False",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "CUDA_VISIBLE_DEVICES": "",
            "VIRTUAL_ENV": str(python.parent.parent),
            "PYTHONNOUSERSITE": "1",
        }
    )
    return env


def peer_version(python: Path, env: dict[str, str]) -> str | None:
    """The Ultralytics version installed for ``python`` (None: not installed)."""
    if not python.is_file():
        return None
    probe = [str(python), "-c", "import ultralytics; print(ultralytics.__version__)"]
    try:
        done = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout else None


def to_predictions(record: dict[str, Any], dataset: Any, n_val: int) -> list[dict]:
    """The driver's predictions as ours (``boxes`` xyxy in the evaluated image's pixels,
    ``labels`` 1..C, ``scores``), in the dataset's order."""
    by_stem = {Path(p["file_name"]).stem: p for p in record["predictions"]}
    preds = []
    for i in range(n_val):
        rec = dataset.records[i]
        p = by_stem.get(Path(rec.file_name).stem, {"boxes": [], "classes": [], "scores": []})
        boxes = torch.tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4)
        h, w = dataset[i][0].shape[-2:]  # the image as our models saw it
        boxes *= torch.tensor([w / rec.width, h / rec.height] * 2)
        preds.append(
            {
                "boxes": boxes,
                "labels": torch.tensor(p["classes"], dtype=torch.int64) + 1,
                "scores": torch.tensor(p["scores"], dtype=torch.float32),
            }
        )
    return preds


def run_peer(
    args: Any, data: Path, work: Path, dataset: Any, n_val: int, budget_s: float | None
) -> dict[str, Any]:
    """Train and score the peer; ``{"status": "ok", ...}`` or the status that says why not."""
    from visionlab.data.convert import convert_dataset
    from visionlab.eval.analysis import scores_and_errors

    python = Path(args.peer_python)
    peer: dict[str, Any] = {"model": Path(args.peer_model).stem, "image_size": args.image_size}
    env = peer_env(python, work / "peer_config", args.threads)
    version = peer_version(python, env)
    if version is None:
        return {
            **peer,
            "status": "not installed",
            "detail": f"No Ultralytics for `{python}`: `make peers` makes it.",
        }
    if budget_s is None or math.isnan(budget_s):
        return {
            **peer,
            "status": "not run",
            "detail": "The YOLO v1 row's training time is its budget: train YOLO v1 too.",
        }
    layout = work / "peer_yolo"
    convert_dataset(
        data, layout, to="yolo", splits=["train", "val"], overwrite=True, progress=False
    )
    names = work / "peer_val_names.txt"
    stems = {p.stem: p.name for p in (layout / "images" / "val").iterdir()}
    names.write_text("\n".join(stems[Path(r.file_name).stem] for r in dataset.records[:n_val]))
    out = work / "peer_predictions.json"
    command = [
        str(python),
        str(DRIVER),
        "--data",
        str(layout / "data.yaml"),
        "--val-images",
        str(layout / "images" / "val"),
        "--names",
        str(names),
        "--out",
        str(out),
        "--project",
        str(work / "peer_run"),
        "--model",
        args.peer_model,
        "--imgsz",
        str(args.image_size),
        "--budget-s",
        f"{budget_s:.1f}",
        "--timing-images",
        str(args.timing_images),
    ]
    print("peer:", " ".join(command), flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    (work / "peer.log").write_text(done.stdout + done.stderr)  # Ultralytics' own output
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {**peer, "status": "failed", "detail": " / ".join(tail)}
    record = json.loads(out.read_text())
    preds = to_predictions(record, dataset, n_val)
    targets = [dataset[i][1] for i in range(n_val)]
    return {
        **peer,
        "status": "ok",
        "version": record["version"],
        "budget_s": budget_s,
        "train_s": record["train_s"],
        "epochs": record["epochs"],
        "total": record["ms_per_image"],
        **dict(zip(("metrics", "errors"), scores_and_errors(preds, targets, dataset.classes))),
    }
