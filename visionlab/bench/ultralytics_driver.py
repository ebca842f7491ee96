"""The peer row's driver: trains an Ultralytics YOLO from its yaml within a wall-clock budget
and writes its predictions and timings as JSON.

Runs inside ``.venv-peers`` (``make peers``) as a subprocess of ``visionlab bench lineage``;
it imports only ``ultralytics`` and the standard library, and visionlab never imports it.
The caller sets the offline environment (``YOLO_OFFLINE``, ``YOLO_AUTOINSTALL``, a private
``YOLO_CONFIG_DIR`` holding a local ``Arial.ttf``) and the thread counts.

Usage: python ultralytics_driver.py --data DATA.yaml --val-images DIR --out OUT.json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="the YOLO layout's data.yaml")
    parser.add_argument("--val-images", required=True, help="folder of the val images")
    parser.add_argument("--names", required=True, help="file names to predict, one a line")
    parser.add_argument("--out", required=True, help="the JSON written")
    parser.add_argument("--project", required=True, help="folder for Ultralytics' run")
    parser.add_argument("--model", default="yolov8n.yaml", help="a model yaml (never weights)")
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--budget-s", type=float, required=True, help="training wall seconds")
    parser.add_argument("--timing-images", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.model.endswith(".yaml"):
        parser.error("--model must be a yaml: weights would be downloaded")

    import ultralytics
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})  # no analytics or events sent
    model = YOLO(args.model)
    start = time.perf_counter()
    model.train(
        data=args.data,
        imgsz=args.imgsz,
        epochs=1000,
        time=args.budget_s / 3600,
        batch=args.batch,
        device="cpu",
        workers=0,
        pretrained=False,
        amp=False,
        plots=False,
        val=False,
        project=args.project,
        name="train",
        exist_ok=True,
        seed=args.seed,
        verbose=False,
    )
    train_s = time.perf_counter() - start
    trainer = model.trainer
    weights = Path(trainer.best if Path(trainer.best).is_file() else trainer.last)
    model = YOLO(str(weights))
    names = Path(args.names).read_text().split()
    paths = [str(Path(args.val_images) / name) for name in names]
    settings = {
        "imgsz": args.imgsz,
        "conf": 0.001,
        "iou": 0.7,
        "max_det": 100,
        "device": "cpu",
        "verbose": False,
    }
    model.predict(paths[0], **settings)  # warm-up
    predictions, ms = [], []
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        result = model.predict(path, **settings)[0]
        if i < args.timing_images:
            ms.append(1000 * (time.perf_counter() - t0))
        boxes = result.boxes
        predictions.append(
            {
                "file_name": Path(path).name,
                "boxes": boxes.xyxy.tolist(),
                "classes": [int(c) for c in boxes.cls.tolist()],
                "scores": boxes.conf.tolist(),
            }
        )
    record = {
        "version": ultralytics.__version__,
        "model": args.model,
        "train_s": train_s,
        "epochs": int(getattr(trainer, "epoch", -1)) + 1,
        "weights": weights.name,
        "ms_per_image": statistics.mean(ms) if ms else None,
        "predictions": predictions,
    }
    Path(args.out).write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
