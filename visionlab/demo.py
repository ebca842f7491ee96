"""`visionlab demo` (what `make demo` runs): the lecture's four tasks on the built-in scenes.

1. render the scenes dataset (once; cached) and draw samples with every annotation kind;
2. classification: train the tiny classifier on the scenes crops and draw its predictions;
3. semantic segmentation: train FCN-8s, its backbone started from that classifier;
4. detection and instance segmentation: train Mask R-CNN from the same backbone and draw
   its instances and its RPN's proposals beside selective search's (its box head gives
   the detection metrics, so Faster R-CNN is an optional step, ``--steps``);
5. relationships: train the relation model from the same backbone and draw its
   relationships beside their scene graph.

The schedules are shortened (``DEMO_OVERRIDES``) so that the whole demo, set-up included,
fits 15 minutes on 2 CPU cores; the recipes' full schedules are what the benchmarks
measure. Every step goes through the same `visionlab` commands a user types. At the end the
demo prints one table of the metrics the runs measured and writes ``OUT/report.md`` with
the pictures (:mod:`visionlab.demo_report`).
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

# step -> (recipe, run folder under --out, where its validation images are in the scenes)
RECIPES: dict[str, tuple[str, str, str]] = {
    "classify": ("configs/classify_scenes.yaml", "classify", "crops/val"),
    "fcn": ("configs/fcn8s_scenes.yaml", "fcn8s", "images/val"),
    "faster_rcnn": ("configs/faster_rcnn_scenes.yaml", "faster_rcnn", "images/val"),
    "mask_rcnn": ("configs/mask_rcnn_scenes.yaml", "mask_rcnn", "images/val"),
    "relations": ("configs/relations_scenes.yaml", "relations", "images/val"),
}
STEPS = ("data", *RECIPES)
DEFAULT_STEPS = ("data", "classify", "fcn", "mask_rcnn", "relations")
# step -> (`visionlab train` overrides, extra `visionlab predict` flags). The short
# schedules that fit the demo's time budget; evaluation only at the end (eval_every=0).
DEMO_OVERRIDES: dict[str, tuple[list[str], list[str]]] = {
    "classify": (["train.epochs=3", "train.eval_every=0"], []),
    "fcn": (["train.epochs=5", "train.eval_every=0"], []),
    "faster_rcnn": (["train.max_steps=500", "train.eval_every=0"], ["--show-proposals"]),
    "mask_rcnn": (["train.max_steps=500", "train.eval_every=0"], ["--show-proposals"]),
    "relations": (
        ["train.max_steps=400", "train.eval_every=0"],
        ["--max-relations", "12"],
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="where runs and pictures go")
    parser.add_argument(
        "--steps",
        default=",".join(DEFAULT_STEPS),
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


def train_overrides(step: str, classifier: Path) -> list[str]:
    """The demo's `visionlab train` overrides of one step: its short schedule and, past the
    classifier, the recipes' initialisation from the classifier the demo trained (random
    weights when that step did not run)."""
    overrides = list(DEMO_OVERRIDES[step][0])
    if step != "classify":  # the papers' ImageNet step, the demo's own classifier
        source = classifier if classifier.is_file() else "null"
        overrides.append(f"model_args.pretrained_backbone={source}")
    return overrides


def _train_and_predict(
    recipe: str, run_dir: Path, images: list[str], overrides: list[str], flags: list[str]
) -> None:
    """Train one recipe into ``run_dir``, then draw its best checkpoint's predictions."""
    # the demo's own folders: a second `make demo` replaces the first one's runs
    _visionlab("train", recipe, f"out={run_dir}", "--overwrite", *overrides)
    best = run_dir / "checkpoints" / "best.pt"
    _visionlab("predict", str(best), *images, "--out", str(run_dir / "predictions"), *flags)


def parse_steps(text: str) -> list[str]:
    """The steps named in ``--steps``, in the demo's order; unknown names refused."""
    from visionlab.errors import VisionLabError

    asked = {s.strip() for s in text.split(",") if s.strip()}
    unknown = sorted(asked - set(STEPS))
    if unknown:
        raise VisionLabError(f"unknown demo steps {unknown}; choose from {list(STEPS)}")
    return [s for s in STEPS if s in asked]


def run(args: argparse.Namespace) -> int:
    from visionlab.data.scenes import default_scenes_root
    from visionlab.demo_report import collect_rows, format_table, schedule_notes, write_report

    out = Path(args.out)
    steps = parse_steps(args.steps)
    start = time.perf_counter()
    root = default_scenes_root()
    print(f"built-in scenes dataset: {root}")
    if "data" in steps:
        _visionlab("data", "check", str(root))
        _visionlab("data", "show", str(root), "--out", str(out / "samples"), "-n", "8")
    classifier = out / RECIPES["classify"][1] / "checkpoints" / "best.pt"
    trained = [step for step in steps if step in RECIPES]
    for step in trained:
        recipe, folder, val_images = RECIPES[step]
        images = _val_images(root / val_images, args.predict_n)
        flags = DEMO_OVERRIDES[step][1]
        _train_and_predict(recipe, out / folder, images, train_overrides(step, classifier), flags)
    minutes = (time.perf_counter() - start) / 60
    rows = collect_rows(out, {step: RECIPES[step][1] for step in trained})
    notes = schedule_notes({s: (RECIPES[s][0], DEMO_OVERRIDES[s][0]) for s in trained})
    print("\nMeasured by this demo on the scenes val split (short schedules: " + notes + ")\n")
    print(format_table(rows))
    report = write_report(out, rows, notes, minutes=minutes)
    print(f"\ndemo finished in {minutes:.1f} min; report: {report}; runs and pictures: {out}/")
    return 0
