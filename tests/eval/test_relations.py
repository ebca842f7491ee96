"""Recall@K of visual relationships under the three protocols of Lu et al. 2016."""

from __future__ import annotations

import math

import pytest
import torch

from visionlab.eval.relations import (
    RelationEvaluator,
    SceneGraphEvaluator,
    rank_triplets,
    relation_recall,
    relation_triplets,
)

PERSON, DOG = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 100.0, 100.0]


def _case():
    # image 0: (person ride horse), (person next_to dog), in the library's contract form
    gt0 = {
        "boxes": torch.tensor([PERSON, [5.0, 5.0, 25.0, 25.0], DOG]),
        "labels": torch.tensor([1, 2, 3]),
        "relations": torch.tensor([[0, 0, 1], [0, 1, 2]]),
    }
    # image 1: one triplet, never predicted
    gt1 = {
        "subject_boxes": [PERSON],
        "subject_labels": [1],
        "predicates": [0],
        "object_boxes": [PERSON],
        "object_labels": [1],
    }
    pred0 = {
        "subject_boxes": [PERSON, PERSON, [20.0, 20.0, 30.0, 30.0], PERSON],
        "subject_labels": [1, 1, 1, 1],
        "predicates": [0, 0, 1, 0],
        "object_boxes": [[5.0, 5.0, 25.0, 25.0], [5.0, 5.0, 25.0, 25.0], DOG, DOG],
        "object_labels": [2, 2, 3, 3],
        # exact; duplicate; subject misplaced (union box still right); wrong predicate
        "scores": [0.9, 0.8, 0.7, 0.6],
    }
    pred1 = {k: [] for k in pred0}
    return [pred0, pred1], [gt0, gt1]


def test_relationship_phrase_and_predicate_protocols():
    preds, gts = _case()
    assert relation_recall(preds, gts, k=(1, 50), protocol="relationship") == {
        "R@1": pytest.approx(1 / 3),
        "R@50": pytest.approx(1 / 3),  # the duplicate does not count twice
        # predicate 0: 1 of 2 found, predicate 1: 0 of 1 -> mean 0.25
        "mR@1": pytest.approx(0.25),
        "mR@50": pytest.approx(0.25),
    }
    phrase = relation_recall(preds, gts, k=(1, 50), protocol="phrase")
    assert phrase == {
        "R@1": pytest.approx(1 / 3),
        "R@50": pytest.approx(2 / 3),
        "mR@1": pytest.approx(0.25),
        "mR@50": pytest.approx(0.75),  # predicate 1 now found: (1/2 + 1) / 2
    }
    # predicate detection on ground-truth boxes: the pair with the right predicate
    assert relation_recall(preds, gts, k=(50,), protocol="predicate")["R@50"] == pytest.approx(
        1 / 3
    )


def test_score_order_and_top_k():
    preds, gts = _case()
    # order now: misplaced subject, wrong predicate, the copy, the exact one
    preds[0]["scores"] = [0.1, 0.2, 0.9, 0.3]
    r = relation_recall(preds, gts, k=(1, 2, 3, 4))
    assert r["R@1"] == 0.0 and r["R@2"] == 0.0 and r["mR@2"] == 0.0
    assert r["R@3"] == pytest.approx(1 / 3) and r["R@4"] == pytest.approx(1 / 3)


def test_evaluator_and_forms():
    preds, gts = _case()
    ev = RelationEvaluator("phrase")
    ev.update(preds[:1], gts[:1])
    ev.update(preds[1:], gts[1:])
    assert ev.compute() == relation_recall(preds, gts, protocol="phrase")
    assert ev.primary == "R@50"
    t = relation_triplets(gts[0], with_scores=False)
    assert t["object_labels"].tolist() == [2, 3] and t["predicates"].tolist() == [0, 1]
    assert math.isnan(relation_recall([preds[1]], [{k: [] for k in gts[1]}])["R@50"])
    with pytest.raises(ValueError, match="protocol"):
        relation_recall(preds, gts, protocol="scene")


def test_rank_triplets_with_and_without_graph_constraint():
    pairs = torch.tensor([[0, 1], [1, 0], [0, 2]])
    scores = torch.tensor([[0.5, 0.4, 0.0], [0.1, 0.2, 0.3], [0.05, 0.0, 0.45]])
    rel, s = rank_triplets(pairs, scores, 3, graph_constraint=True)
    # one predicate per pair, its best: (0 p0 1) 0.5, (0 p2 2) 0.45, (1 p2 0) 0.3
    assert rel.tolist() == [[0, 0, 1], [0, 2, 2], [1, 2, 0]]
    assert s.tolist() == pytest.approx([0.5, 0.45, 0.3])
    rel, s = rank_triplets(pairs, scores, 3, graph_constraint=False)
    # any (pair, predicate): pair (0, 1) comes twice
    assert rel.tolist() == [[0, 0, 1], [0, 2, 2], [0, 1, 1]]
    assert s.tolist() == pytest.approx([0.5, 0.45, 0.4])
    empty, none = rank_triplets(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 3), 5)
    assert empty.shape == (0, 3) and none.shape == (0,)


def test_recall_with_and_without_graph_constraint_on_a_hand_made_case():
    # two objects, two true triplets on the same pair: (0 p0 1) and (0 p1 1)
    boxes = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    gt = {
        "boxes": boxes,
        "labels": torch.tensor([1, 2]),
        "relations": torch.tensor([[0, 0, 1], [0, 1, 1]]),
    }
    out = {
        "boxes": boxes,
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([1.0, 1.0]),
        "pairs": torch.tensor([[0, 1], [1, 0]]),
        "predicate_scores": torch.tensor([[0.6, 0.3], [0.4, 0.1]]),
    }
    ev = SceneGraphEvaluator(["a", "b"], ["p0", "p1"], ks=(1, 2, 3, 50))
    ev.update({"predcls": [out]}, [gt])
    m = ev.compute()
    # graph constraint: the pair gives one triplet, so at most 1 of the 2 true ones
    assert m["predicate_R@50"] == pytest.approx(0.5) and m["predicate_R@1"] == pytest.approx(0.5)
    # without: both predicates of the pair, ranked 0.6, 0.3 (0.4 of the reversed pair between)
    assert m["predicate_R@1_ng"] == pytest.approx(0.5)
    assert m["predicate_R@2_ng"] == pytest.approx(0.5)
    assert m["predicate_R@3_ng"] == pytest.approx(1.0)
    assert m["predicate_R@50_ng"] == pytest.approx(1.0)
    assert m["predicate_mR@50"] == pytest.approx(0.5) and m["predicate_mR@50_ng"] == 1.0
    assert m["predicate_per_predicate"] == {"p0": 1.0, "p1": 0.0}
    assert "relationship_R@50" not in m and "AP" not in m  # no sgdet outputs seen


def test_scene_graph_evaluator_detection_mode_bound_and_box_ap():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30], [40.0, 0, 50, 10]])
    gt = {
        "boxes": boxes,
        "labels": torch.tensor([1, 2, 1]),
        "relations": torch.tensor([[0, 0, 1], [2, 1, 1]]),
    }
    # the detector finds objects 0 and 1 (object 2 with the wrong class)
    out = {
        "boxes": boxes,
        "labels": torch.tensor([1, 2, 2]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "pairs": torch.tensor([[0, 1], [2, 1]]),
        "predicate_scores": torch.tensor([[0.5, 0.1], [0.1, 0.4]]),
    }
    ev = SceneGraphEvaluator(["a", "b"], ["p0", "p1"])
    ev.update({"sgdet": [out]}, [gt])
    m = ev.compute()
    assert m["relationship_bound"] == pytest.approx(0.5)  # object 2 is never found as "a"
    assert m["relationship_R@50"] == pytest.approx(0.5)
    assert m["phrase_R@50"] == pytest.approx(0.5)
    assert 0 < m["AP50"] < 1  # box AP of the sgdet detections beside the recalls
    assert ev.primary == "relationship_R@50"
    with pytest.raises(ValueError, match="unknown relation modes"):
        ev.update({"sgdett": [out]}, [gt])
