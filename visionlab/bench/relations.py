"""Visual relationships on scenes: the frequency baseline and the relation head's feature
ablation, each trained by the engine on the same schedule from the recipe.

Rows (Zellers et al. 2018 report the frequency baseline; the others switch the head's
inputs, :data:`visionlab.models.relation_rcnn.FEATURES`): the predicate given the two classes
counted on the training set; spatial features only; the union box's visual features only;
class embeddings + spatial; all three. Each row reports recall in the three modes
(predicate classification, scene-graph classification, relationship detection, Lu et al.
2016), mean recall over predicates, the relationship detection bound and per-predicate
recall, so the table shows which predicate needs what. Writes ``OUT_DIR/relations.md`` and
``OUT_DIR/relations_per_predicate.png``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from visionlab.bench.machine import header, row, write_markdown
from visionlab.bench.runs import (
    add_overrides,
    add_training_arguments,
    schedule_overrides,
    timed_train,
)

CONFIG = "configs/relations_scenes.yaml"

# row -> recipe overrides
ROWS: dict[str, list[str]] = {
    "frequency baseline": ["model=relation_freq"],
    "spatial only": ["model_args.relation_head.features=['spatial']"],
    "visual (union) only": ["model_args.relation_head.features=['visual']"],
    "class + spatial": ["model_args.relation_head.features=['spatial','class']"],
    "full (visual + spatial + class)": [],
}
MODES = (("predicate", "predicate classification"), ("sgcls", "scene-graph classification"),
         ("relationship", "relationship detection"))  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=CONFIG, help="the recipe every row starts from")
    parser.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"comma-separated rows (default: all of {list(ROWS)})",
    )
    add_training_arguments(parser)
    add_overrides(parser, "recipe overrides for every row")


def run(args: argparse.Namespace) -> int:
    import torch

    from visionlab.bench.machine import comma_list

    torch.set_num_threads(args.threads)
    rows = comma_list(args.rows, "--rows", str, tuple(ROWS))
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="bench_relations_"))
    results: dict[str, dict[str, Any]] = {}
    for name in rows:
        out = runs_dir / name.split(" ")[0].replace("(", "")
        overrides = [
            *ROWS[name],
            *schedule_overrides(args),
            *args.overrides,
            f"out={out}",
            "train.progress=false",
        ]
        print(f"training {name}: {' '.join(overrides)}", flush=True)
        result, seconds = timed_train(args.config, overrides)
        metrics = result.metrics or {}
        results[name] = {**metrics, "seconds": seconds, "step": result.step}
        keys = ("predicate_R@50", "relationship_R@50", "relationship_bound")
        print(name, {k: round(metrics.get(k, float("nan")), 4) for k in keys}, flush=True)
    predicates = _predicates(results)
    picture = _plot(results, predicates, Path(args.out_dir))
    text = _markdown(args, results, predicates, picture.name)
    write_markdown(args.out_dir, "relations.md", text, picture)
    return 0


def _predicates(results: dict[str, dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in results.values():
        for p in r.get("predicate_per_predicate", {}):
            if p not in names:
                names.append(p)
    return names


def _plot(results: dict[str, dict[str, Any]], predicates: list[str], out_dir: Path) -> Path:
    from visionlab.viz import plot_grouped_bars

    out_dir.mkdir(parents=True, exist_ok=True)
    series = {
        name: [r.get("predicate_per_predicate", {}).get(p, float("nan")) for p in predicates]
        for name, r in results.items()
    }
    return plot_grouped_bars(
        predicates,
        series,
        out_dir / "relations_per_predicate.png",
        ylabel="predicate classification R@50",
    )


def _f(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "n/a"


def _markdown(args, results, predicates, picture: str) -> str:
    lines = [
        header("Visual relationships: frequency baseline and feature ablation (scenes)"),
        f"- Recipe `{args.config}`, each row with its overrides below, and "
        f"`{' '.join([*schedule_overrides(args), *args.overrides]) or 'the recipe schedule'}`"
        f"; threads {args.threads}. Every row trains its own detector and head from the same "
        "seed (the frequency baseline's head learns nothing: it counts), and is scored on "
        "the whole val split by the engine's evaluator (`visionlab eval`'s keys).",
        "- R@K: recall of ground-truth triplets among each image's K best (Lu et al. 2016); "
        "mR@K its mean over predicates; graph constraint (one predicate per pair) unless "
        "`_ng`. Predicate classification gets the ground-truth boxes and classes; scene-graph "
        "classification the boxes; relationship detection only the image (its bound: the "
        "fraction of ground-truth triplets whose two objects the detector found with the right "
        "class at IoU >= 0.5). At K = 50 an image's recall is capped by its triplet count "
        "(scenes' images have up to 56).",
        "",
        "## Recall per mode",
        "",
        row(
            "model",
            "overrides",
            "predcls R@50",
            "predcls mR@50",
            "predcls R@50 ng",
            "sgcls R@50",
            "sgdet R@50",
            "sgdet mR@50",
            "bound",
            "sgdet / bound",
            "phrase R@50",
            "box AP50",
            "train (min)",
        ),
        "|---|---|" + "---:|" * 11,
    ]
    for name, r in results.items():
        bound = r.get("relationship_bound", float("nan"))
        sgdet = r.get("relationship_R@50", float("nan"))
        ratio = sgdet / bound if isinstance(bound, float) and bound > 0 else float("nan")
        lines.append(
            row(
                name,
                "`" + (" ".join(ROWS[name]) or "(the recipe)") + "`",
                *(
                    _f(r.get(k))
                    for k in (
                        "predicate_R@50",
                        "predicate_mR@50",
                        "predicate_R@50_ng",
                        "sgcls_R@50",
                        "relationship_R@50",
                        "relationship_mR@50",
                    )
                ),
                _f(bound),
                _f(ratio),
                _f(r.get("phrase_R@50")),
                _f(r.get("AP50")),
                f"{r['seconds'] / 60:.1f}",
            )
        )
    lines += [
        "",
        "Targets (issue 20, the full model): predicate classification R@50 >= 0.95 and mR@50 "
        ">= 0.9; relationship detection R@50 >= 0.9 x its bound.",
        "",
        "## Per predicate: which predicate needs what",
        "",
        "Predicate classification R@50 of each predicate (ground-truth boxes and classes, so "
        "the head alone is measured):",
        "",
        *_per_predicate(results, "predicate", predicates),
        "",
        f"![per-predicate recall]({picture})",
        "",
        "Relationship detection R@50 of each predicate (the image only):",
        "",
        *_per_predicate(results, "relationship", predicates),
        "",
    ]
    return "\n".join(lines)


def _per_predicate(results: dict[str, dict[str, Any]], mode: str, predicates: list[str]):
    """The table rows of each model's ``<mode>_per_predicate`` recall."""
    yield row("model", *predicates)
    yield "|---|" + "---:|" * len(predicates)
    for name, r in results.items():
        yield row(name, *(_f(r.get(f"{mode}_per_predicate", {}).get(p)) for p in predicates))
