"""`visionlab bench relations`: every row is a recipe override the model takes, and a tiny
run of two rows writes the tables and the per-predicate picture."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from visionlab.bench import relations as bench


def test_every_row_builds_the_model_it_names():
    from visionlab.config import load_config
    from visionlab.models.registry import build_model

    for name, overrides in bench.ROWS.items():
        cfg = load_config(bench.CONFIG, [*overrides, "model_args.pretrained_backbone=null"])
        model = build_model(cfg.model, **cfg.model_args, num_classes=8, num_predicates=8)
        settings = model.roi_heads["relation"].settings
        if name == "frequency baseline":
            assert settings.predictor == "frequency"
        else:
            assert settings.predictor == "learned"
            assert len(settings.features) == (3 if name.startswith("full") else name.count("+") + 1)


@pytest.mark.slow
def test_tiny_run_writes_the_tables_and_the_picture(tmp_path: Path, one_thread):
    from visionlab.data.scenes import render_scenes

    data = render_scenes(tmp_path / "sc", n_train=4, n_val=2, size=64, progress=False, workers=0)
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir")
    bench.add_arguments(parser)
    args = parser.parse_args(
        [
            "--out-dir", str(tmp_path / "out"), "--rows", "frequency baseline,spatial only",
            "--max-steps", "2", "--threads", "1", "--runs-dir", str(tmp_path / "runs"),
            f"data={data}", "image_size=64", "train.batch_size=2",
            "model_args.pretrained_backbone=null", "model_args.backbone_width=4",
            "model_args.box_head.fc_width=16", "model_args.relation_head.width=8",
        ]
    )  # fmt: skip
    assert bench.run(args) == 0
    text = (tmp_path / "out" / "relations.md").read_text()
    assert "| frequency baseline | `model=relation_freq` |" in text
    assert "| spatial only |" in text and "visual (union) only" not in text
    assert "| model | inside | in front of |" in text  # the per-predicate table's header
    assert (tmp_path / "out" / "relations_per_predicate.png").stat().st_size > 1000
