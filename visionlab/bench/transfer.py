"""Transfer learning: pretrain tiny_cnn on the scenes shapes, fine-tune it on another label set.

Pretrains on the shape crops (or takes ``--pretrained``), relabels the crops by colour or
colour-shape pair keeping a stratified ``--fraction`` of the training labels, and trains the
target three times from the same seed and schedule: from scratch, fine-tuned, and as a linear
probe. Writes ``OUT_DIR/transfer.md`` and ``OUT_DIR/transfer_curves.png``.
"""

from __future__ import annotations

import argparse
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionlab.bench.machine import header, row, write_markdown
from visionlab.bench.runs import timed_train
from visionlab.errors import VisionLabError

LABEL_SETS = ("color", "shape_color")
# Why each target label set is in the experiment (written into the report).
LABEL_SET_NOTES = {
    "color": "**color** (8 colours, drawn independently of the shape): a low-level cue that a "
    "small network learns from few labels, and that shape pretraining may have learnt to "
    "ignore, so transfer need not help; it tells whether the pretrained features kept colour.",
    "shape_color": "**shape_color** (the 56 colour-shape pairs): needs the pretrained shape "
    "knowledge plus colour, with only a handful of labels per pair, too few to learn shapes "
    "from scratch; the setting where transfer should pay off.",
}
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
PRETRAIN_CONFIG = "classify_scenes.yaml"
TARGET_CONFIG = "transfer_finetune.yaml"


@dataclass
class Arm:
    """One training run on a target label set."""

    name: str
    start: str
    overrides: list[str]
    curve: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final(self) -> float:
        return self.curve[-1][1] if self.curve else float("nan")

    @property
    def best(self) -> tuple[int, float]:
        return max(self.curve, key=lambda p: p[1]) if self.curve else (0, float("nan"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--labels",
        nargs="+",
        choices=LABEL_SETS,
        default=list(LABEL_SETS),
        help="target label sets [color shape_color]",
    )
    parser.add_argument(
        "--fraction", type=float, default=0.1, help="share of target training labels [0.1]"
    )
    parser.add_argument(
        "--steps", type=int, default=600, help="optimizer steps of every target run [600]"
    )
    parser.add_argument(
        "--pretrained", help="a tiny_cnn shape checkpoint to start from (skips pretraining)"
    )
    parser.add_argument(
        "--pretrain-epochs", type=int, default=None, help="override the pretraining recipe's"
    )
    parser.add_argument(
        "--work-dir", default="runs/bench_transfer", help="runs and relabelled data go here"
    )
    parser.add_argument("--seed", type=int, default=0, help="subset, init and data order seed")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _relabel(root: Path, work: Path, label_set: str, split: str) -> Path:
    """``work/<label_set>-full/<split>/<label>/*.png``: every crop of ``split`` relabelled."""
    from visionlab.data.scenes import write_crops

    out = work / f"{label_set}-full"
    if (out / split / ".complete").is_file():
        return out / split
    shutil.rmtree(out / split, ignore_errors=True)
    colour_dir = write_crops(root, out / "tmp", split=split, attribute="color", progress=False)
    if label_set == "color":
        shutil.move(str(colour_dir), out / split)
    else:  # join with the shape crops of the same file names
        shapes = {p.name: p.parent.name for p in (root / "crops" / split).glob("*/*.png")}
        for path in sorted(colour_dir.glob("*/*.png")):
            if path.name not in shapes:
                raise VisionLabError(f"{path}: no shape crop of the same name in {root}")
            target = out / split / f"{path.parent.name}_{shapes[path.name]}" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), target)
        shutil.rmtree(colour_dir)
    shutil.rmtree(out / "tmp", ignore_errors=True)
    (out / split / ".complete").write_text("done\n")
    return out / split


def _subset(full: Path, out: Path, fraction: float, seed: int) -> dict[str, int]:
    """Copy a stratified ``fraction`` of each class folder of ``full`` (at least one image
    per class) into ``out``; returns images per class."""
    rng = random.Random(seed)
    counts = {}
    for folder in sorted(p for p in full.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        chosen = rng.sample(files, max(1, round(fraction * len(files)))) if files else []
        (out / folder.name).mkdir(parents=True, exist_ok=True)
        for path in chosen:
            shutil.copy2(path, out / folder.name / path.name)
        counts[folder.name] = len(chosen)
    return counts


def build_target(
    root: Path, work: Path, label_set: str, fraction: float, seed: int
) -> tuple[Path, dict[str, Any]]:
    """The target dataset folder (``train/`` = the subset, ``val/`` = every val crop)."""
    full_train = _relabel(root, work, label_set, "train")
    full_val = _relabel(root, work, label_set, "val")
    data = work / f"{label_set}-{round(fraction * 100)}pct-seed{seed}"
    shutil.rmtree(data, ignore_errors=True)
    counts = _subset(full_train, data / "train", fraction, seed)
    shutil.copytree(full_val, data / "val", ignore=shutil.ignore_patterns(".complete"))
    n_full = sum(1 for _ in full_train.glob("*/*.png"))
    n_val = sum(1 for _ in full_val.glob("*/*.png"))
    stats = {
        "classes": len(counts),
        "train": sum(counts.values()),
        "train_full": n_full,
        "val": n_val,
        "min_per_class": min(counts.values()),
        "max_per_class": max(counts.values()),
    }
    return data, stats


def _eval_curve(run_dir: Path) -> list[tuple[int, float]]:
    from visionlab.engine.logging import read_metrics

    points = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        if record.get("type") == "eval" and isinstance(record.get("val/top1"), int | float):
            points[int(record["step"])] = float(record["val/top1"])
    return sorted(points.items())


def result_config(run_dir: Path) -> dict[str, Any]:
    """The resolved recipe a run saved (``run_dir/config.yaml``)."""
    import yaml

    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def pretrain(work: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Train tiny_cnn on the shape crops; returns its best checkpoint and its numbers."""
    overrides = [f"out={work / 'pretrain'}", f"seed={args.seed}"]
    if args.pretrain_epochs is not None:
        overrides.append(f"train.epochs={args.pretrain_epochs}")
    if args.no_progress:
        overrides.append("train.progress=false")
    result, seconds = timed_train(CONFIG_DIR / PRETRAIN_CONFIG, overrides)
    best = result.checkpoints.get("best") or result.run_dir / "checkpoints" / "best.pt"
    curve = _eval_curve(result.run_dir)
    return Path(best), {
        "seconds": seconds,
        "steps": result.step,
        "best_top1": max((v for _, v in curve), default=float("nan")),
        "augment": result_config(result.run_dir).get("augment", {}),
    }


def run_label_set(
    label_set: str, data: Path, checkpoint: Path, work: Path, args: argparse.Namespace
) -> list[Arm]:
    common = [f"data={data}", f"train.max_steps={args.steps}", f"seed={args.seed}"]
    if args.no_progress:
        common.append("train.progress=false")
    arms = [
        Arm("scratch", "random init", []),
        Arm("fine-tune", "shape-pretrained, all layers", [f"transfer.pretrained={checkpoint}"]),
        Arm(
            "linear probe",
            "shape-pretrained, backbone frozen",
            [f"transfer.pretrained={checkpoint}", "transfer.freeze=backbone"],
        ),
    ]
    for arm in arms:
        out = work / f"{label_set}-{arm.name.replace(' ', '_')}"
        result, arm.seconds = timed_train(
            CONFIG_DIR / TARGET_CONFIG, [*common, *arm.overrides, f"out={out}"]
        )
        arm.curve = _eval_curve(result.run_dir)
        if not arm.curve:
            raise VisionLabError(f"{out}: the run wrote no evaluation records")
    return arms


def plot(results: dict[str, list[Arm]], out_png: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.4 * len(results), 3.9))
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    styles = {"scratch": "tab:gray", "fine-tune": "tab:blue", "linear probe": "tab:orange"}
    for ax, (label_set, arms) in zip(axes, results.items()):
        for arm in arms:
            steps, top1 = zip(*arm.curve)
            ax.plot(
                steps,
                [100 * v for v in top1],
                marker="o",
                markersize=3,
                color=styles.get(arm.name),
                label=arm.name,
            )
        ax.set_title(f"target: {label_set}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("val top-1 (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _reading(label_set: str, arms: list[Arm]) -> str:
    by = {a.name: a for a in arms}
    scratch, tuned, probe = by["scratch"], by["fine-tune"], by["linear probe"]
    gain = 100 * (tuned.final - scratch.final)
    helps = "helps" if gain >= 1 else "does not help" if gain <= -1 else ""
    verdict = f"fine-tuning ends {gain:+.1f} points from training from scratch" + (
        f" (transfer {helps})" if helps else " (no real difference)"
    )
    # first evaluated step at which each run is within 1 point of the scratch run's best
    target = scratch.best[1] - 0.01
    reach = {a.name: next((s for s, v in a.curve if v >= target), None) for a in (scratch, tuned)}
    speed = ""
    if reach["fine-tune"] is not None and reach["scratch"] is not None:
        speed = (
            f"; it is within a point of the scratch run's best top-1 at step "
            f"{reach['fine-tune']}, scratch at step {reach['scratch']}"
        )
    return (
        f"- **{label_set}**: {verdict}{speed}. The frozen shape features alone (linear "
        f"probe) give {_pct(probe.final)}% top-1."
    )


def write_report(
    out_dir: Path,
    results: dict[str, list[Arm]],
    stats: dict[str, dict[str, Any]],
    pre: dict[str, Any],
    checkpoint: Path,
    args: argparse.Namespace,
    png: Path,
) -> Path:
    lines = [header("Transfer learning on the scenes crops: shapes -> other labels"), ""]
    lines += [
        "tiny_cnn is pretrained on the scenes crops labelled by **shape** (7 classes, every "
        "training crop), then trained on the same kind of crops labelled otherwise, with "
        f"only **{round(100 * args.fraction)}%** of the training labels, for **{args.steps}** "
        "optimizer steps (batch 32, SGD + Nesterov, cosine schedule: "
        f"`configs/{TARGET_CONFIG}`). Three starts, everything else equal (seed "
        f"{args.seed}, data order, schedule): random init (*scratch*), the pretrained network "
        "with a new head, all layers trained (*fine-tune*), and the pretrained backbone "
        "frozen with only the new head trained (*linear probe*). Validation: every crop of "
        "the val split.",
        "",
    ]
    lines += [f"- {LABEL_SET_NOTES[label_set]}" for label_set in results] + [""]
    if pre:
        lines.append(
            f"Pretraining: `visionlab train configs/{PRETRAIN_CONFIG}` "
            f"({pre['steps']} steps, {pre['seconds']:.0f} s; augmentation {pre['augment']}): "
            f"best shape val top-1 {_pct(pre['best_top1'])}%."
        )
    else:
        lines.append(f"Pretrained checkpoint: `{checkpoint}` (given).")
    lines.append("")
    for label_set, arms in results.items():
        s = stats[label_set]
        lines += [
            f"## Target: {label_set}",
            "",
            f"{s['classes']} classes; {s['train']} labelled training crops of {s['train_full']} "
            f"({s['min_per_class']}-{s['max_per_class']} per class); {s['val']} val crops.",
            "",
            "| start | initialisation | final top-1 (%) | best top-1 (%) @ step | wall (s) |",
            "|---|---|---:|---:|---:|",
        ]
        for arm in arms:
            step, best = arm.best
            cells = (_pct(arm.final), f"{_pct(best)} @ {step}", f"{arm.seconds:.0f}")
            lines.append(row(arm.name, arm.start, *cells))
        lines.append("")
    lines += ["## Reading", ""]
    lines += [_reading(label_set, arms) for label_set, arms in results.items()]
    lines += [
        "",
        f"![validation top-1 against step]({png.name})",
        "",
        "Wall times are on a shared machine and only roughly comparable between rows.",
        "",
    ]
    return write_markdown(out_dir, "transfer.md", lines, png)


def run(args: argparse.Namespace) -> int:
    from visionlab.data.scenes import default_scenes_root

    if not 0 < args.fraction <= 1:
        raise VisionLabError(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.steps < 1:
        raise VisionLabError(f"--steps must be >= 1, got {args.steps}")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    root = default_scenes_root(progress=not args.no_progress)
    pre: dict[str, Any] = {}
    if args.pretrained:
        checkpoint = Path(args.pretrained)
        if not checkpoint.is_file():
            raise VisionLabError(f"--pretrained {checkpoint}: no such file")
    else:
        checkpoint, pre = pretrain(work, args)
        print(f"pretrained on shapes: best val top-1 {_pct(pre['best_top1'])}% -> {checkpoint}")
    results: dict[str, list[Arm]] = {}
    stats: dict[str, dict[str, Any]] = {}
    for label_set in args.labels:
        data, stats[label_set] = build_target(
            root, work / "data", label_set, args.fraction, args.seed
        )
        results[label_set] = run_label_set(label_set, data, checkpoint, work, args)
        for arm in results[label_set]:
            print(
                f"{label_set:12s} {arm.name:13s} final {_pct(arm.final)}%  "
                f"best {_pct(arm.best[1])}% @ {arm.best[0]}"
            )
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot(results, out_dir / "transfer_curves.png")
    write_report(out_dir, results, stats, pre, checkpoint, args, png)
    return 0
