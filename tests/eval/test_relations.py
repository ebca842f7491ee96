"""Recall@K of visual relationships under the three protocols of Lu et al. 2016."""

from __future__ import annotations

import math

import pytest
import torch

from visionlab.eval.relations import RelationEvaluator, relation_recall, relation_triplets

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
    }
    phrase = relation_recall(preds, gts, k=(1, 50), protocol="phrase")
    assert phrase == {"R@1": pytest.approx(1 / 3), "R@50": pytest.approx(2 / 3)}
    # predicate detection on ground-truth boxes: the pair with the right predicate
    assert relation_recall(preds, gts, k=(50,), protocol="predicate")["R@50"] == pytest.approx(
        1 / 3
    )


def test_score_order_and_top_k():
    preds, gts = _case()
    # order now: misplaced subject, wrong predicate, the copy, the exact one
    preds[0]["scores"] = [0.1, 0.2, 0.9, 0.3]
    r = relation_recall(preds, gts, k=(1, 2, 3, 4))
    assert r["R@1"] == 0.0 and r["R@2"] == 0.0
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
