"""Visual relationships end to end: a tiny relation model trained by `visionlab train` on a
scenes copy, scored by `visionlab eval` (the three protocols' R@K and mR@K, with and
without graph constraint, beside box AP), run by `visionlab predict` (triplets in the JSON,
arrows and a scene graph drawn)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from tiny_runs import train_on_scenes_copy

from visionlab.cli import main
from visionlab.data.scenes import PREDICATES

TINY_RELATION = (
    "model_args={'backbone_width': 4, 'feature_stride': 8, 'box_head': {'fc_width': 32}, "
    "'relation_head': {'width': 16, 'embed_dim': 4}, 'score_thresh': 0.0, "
    "'detections_per_img': 6}"
)


@pytest.fixture(scope="module")
def relation_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(scenes copy, run directory) of a one-epoch relation model; every detection is kept
    (``score_thresh`` 0), so the barely trained model still predicts."""
    return train_on_scenes_copy(
        tmp_path_factory.mktemp("relation"), "relation", "relation_rcnn", TINY_RELATION
    )


def test_eval_reports_every_protocol_with_and_without_graph_constraint(relation_run, capsys):
    data, run = relation_run
    best = run / "checkpoints" / "best.pt"
    capsys.readouterr()
    assert main(["eval", str(best), "--data", str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for protocol in ("predicate", "phrase", "relationship", "sgcls"):
        for k in (20, 50, 100):
            for kind in ("R", "mR"):
                for suffix in ("", "_ng"):
                    key = f"{protocol}_{kind}@{k}{suffix}"
                    assert 0 <= metrics[key] <= 1, key
    assert 0 <= metrics["relationship_bound"] <= 1 and -1 <= metrics["AP"] <= 1
    # predicate classification sees every ground-truth pair: with K >= all pairs, one
    # predicate per pair is found whenever it is the best one, so R@100 > 0 after training
    assert metrics["predicate_R@100"] > 0
    assert set(metrics["predicate_per_predicate"]) <= set(PREDICATES)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    evals = [r for r in evals if r["type"] == "eval"]
    assert evals and {"val/relationship_R@50", "val/predicate_mR@50"} <= set(evals[-1])
    from visionlab.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(best)
    assert ckpt["best_metric"]["name"] == "relationship_R@50"
    assert ckpt["model_args"]["num_predicates"] == 8


def test_predict_lists_triplets_and_draws_the_scene_graph(relation_run, tmp_path, capsys):
    data, run = relation_run
    best = run / "checkpoints" / "best.pt"
    image = sorted((data / "images" / "val").glob("*.png"))[0]
    out = tmp_path / "pred"
    assert (
        main(["predict", str(best), str(image), "--out", str(out), "--score-threshold", "0"]) == 0
    )
    record = json.loads((out / "predictions.json").read_text())["predictions"][0]
    detections, relations = record["detections"], record["relations"]
    assert detections and relations
    n = len(detections)
    assert len({(r["subject"], r["object"]) for r in relations}) == len(relations)  # one each
    for r in relations:
        assert 0 <= r["subject"] < n and 0 <= r["object"] < n and r["subject"] != r["object"]
        assert isinstance(r["predicate"], str) and 0 <= r["score"] <= 1
    scores = [r["score"] for r in relations]
    assert scores == sorted(scores, reverse=True)
    drawing = Image.open(out / record["drawing"])
    assert drawing.width > 1.8 * drawing.height  # the image and the scene graph side by side
    # without the graph constraint a pair may come with several predicates
    free = tmp_path / "free"
    args = ["predict", str(best), str(image), "--out", str(free), "--score-threshold", "0"]
    assert main([*args, "--no-graph-constraint"]) == 0
    loose = json.loads((free / "predictions.json").read_text())["predictions"][0]["relations"]
    pairs = [(r["subject"], r["object"]) for r in loose]
    assert len(set(pairs)) < len(pairs)


def test_no_graph_constraint_needs_a_relation_model():
    from visionlab.engine.commands_predict import _check_graph_constraint
    from visionlab.errors import VisionLabError

    _check_graph_constraint(True, "relation_rcnn", "relation")  # accepted
    _check_graph_constraint(False, "faster_rcnn", "detection")
    with pytest.raises(VisionLabError, match="faster_rcnn predicts no relationships"):
        _check_graph_constraint(True, "faster_rcnn", "detection")
