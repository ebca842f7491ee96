"""`visionlab demo` (what `make demo` runs): the main job on the built-in scenes dataset.

1. render the scenes dataset (once; cached) and draw samples with every annotation kind;
2. train the tiny classifier on the scenes crops and draw its predictions;
3. train FCN-8s on the scenes and write its masks and overlays;
4. train Faster R-CNN on the scenes (a short demo schedule) and draw its detections and
   its RPN's proposals beside selective search's;
5. train Mask R-CNN on the scenes (a short demo schedule) and draw its instances;
6. train the relation model on the scenes (a short demo schedule) and draw its
   relationships beside their scene graph.

Every step goes through the same `visionlab` commands a user types, so the demo shows the
command line as much as the models. Pictures land under ``--out`` (default runs/demo).
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

STEPS = ("data", "classify", "fcn", "faster_rcnn", "mask_rcnn", "relations")
# step -> (`visionlab train` overrides, extra `visionlab predict` flags): a short schedule
DEMO_OVERRIDES: dict[str, tuple[list[str], list[str]]] = {
    "faster_rcnn": (["train.epochs=2", "train.eval_every=2"], ["--show-proposals"]),
    "mask_rcnn": (["train.epochs=2", "train.eval_every=2"], []),
    "relations": (["train.epochs=2", "train.eval_every=2"], ["--max-relations", "12"]),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="where runs and pictures go")
    parser.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"comma-separated subset of {','.join(STEPS)}",
    )
    parser.add_argument(
        "--predict-n", type=int, default=8, help="validation images to predict and draw"
    )


def _visionlab(*argv: str) -> None:
    """Run one `visionlab` command in-process, echoing it as a user would type it."""
    from visionlab.cli import main
    from visionlab.errors import VisionLabError

    print(f"\n$ visionlab {shlex.join(argv)}", flush=True)
    status = main(list(argv))
    if status != 0:
        raise VisionLabError(f"`visionlab {shlex.join(argv)}` failed (exit code {status})")


def _val_images(folder: Path, n: int) -> list[str]:
    files = sorted(p for p in folder.rglob("*.png"))
    step = max(1, len(files) // n) if files else 1
    return [str(p) for p in files[::step][:n]]


def _train_and_predict(
    recipe: str,
    run_dir: Path,
    images: list[str],
    overrides: list[str] | None = None,
    predict_flags: list[str] | None = None,
) -> None:
    """Train one recipe into ``run_dir``, then draw its best checkpoint's predictions."""
    # the demo's own folders: a second `make demo` replaces the first one's runs
    _visionlab("train", recipe, f"out={run_dir}", "--overwrite", *(overrides or []))
    best = run_dir / "checkpoints" / "best.pt"
    predict_out = ["--out", str(run_dir / "predictions"), *(predict_flags or [])]
    _visionlab("predict", str(best), *images, *predict_out)


def run(args: argparse.Namespace) -> int:
    from visionlab.data.scenes import default_scenes_root

    out = Path(args.out)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        from visionlab.errors import VisionLabError

        raise VisionLabError(f"unknown demo steps {unknown}; choose from {list(STEPS)}")
    start = time.perf_counter()
    root = default_scenes_root()
    print(f"built-in scenes dataset: {root}")
    if "data" in steps:
        _visionlab("data", "check", str(root))
        _visionlab("data", "show", str(root), "--out", str(out / "samples"), "-n", "8")
    recipes = {
        "classify": ("classify", "configs/classify_scenes.yaml", root / "crops" / "val"),
        "fcn": ("fcn8s", "configs/fcn8s_scenes.yaml", root / "images" / "val"),
        "faster_rcnn": ("faster_rcnn", "configs/faster_rcnn_scenes.yaml", root / "images" / "val"),
        "mask_rcnn": ("mask_rcnn", "configs/mask_rcnn_scenes.yaml", root / "images" / "val"),
        "relations": ("relations", "configs/relations_scenes.yaml", root / "images" / "val"),
    }
    for step, (name, recipe, val_images) in recipes.items():
        if step in steps:
            overrides, flags = DEMO_OVERRIDES.get(step, ([], []))
            classifier = out / "classify" / "checkpoints" / "best.pt"
            if step != "classify":  # the papers' classifier init, the demo's own
                source = classifier if classifier.is_file() else "null"
                overrides = [*overrides, f"model_args.pretrained_backbone={source}"]
            images = _val_images(val_images, args.predict_n)
            _train_and_predict(recipe, out / name, images, overrides, flags)
    minutes = (time.perf_counter() - start) / 60
    print(f"\ndemo finished in {minutes:.1f} min; pictures and runs are under {out}/")
    return 0
