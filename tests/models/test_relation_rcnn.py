"""The relation head: pair enumeration, "no relation" sampling, the spatial encoding under a
horizontal flip, the union box's masks, the frequency counts, the three test-time modes, and
learning the relationships of a few images."""

from __future__ import annotations

import pytest
import torch

from visionlab.errors import VisionLabError
from visionlab.models.registry import build_model
from visionlab.models.relation_rcnn import (
    RelationHeadSettings,
    all_pairs,
    box_masks,
    pair_labels,
    sample_pairs,
    spatial_encoding,
)

SMALL = {
    "backbone_width": 8,
    "feature_stride": 8,
    "rpn": {"anchor_sizes": [16, 32]},
    "box_head": {"fc_width": 32},
    "num_predicates": 3,
    "relation_head": {"width": 16, "embed_dim": 4},
}


def test_all_ordered_pairs_without_self_pairs():
    pairs = all_pairs(3)
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 0], [1, 2], [2, 0], [2, 1]]
    assert all_pairs(1).shape == (0, 2) and all_pairs(0).shape == (0, 2)


def test_pair_labels_and_no_relation_sampling():
    rel = torch.tensor([[0, 2, 1], [2, 0, 3]])  # (0 p2 1), (2 p0 3)
    labels = pair_labels(4, rel)
    assert labels[0, 1] == 3 and labels[2, 3] == 1  # predicate + 1
    assert labels.sum() == 4 and labels[1, 0] == 0  # the reverse pair is unrelated
    torch.manual_seed(0)
    pairs = sample_pairs(labels, pairs_per_image=10, negative_ratio=2.0)
    related = labels[pairs[:, 0], pairs[:, 1]] > 0
    assert related[:2].all() and not related[2:].any()  # related pairs first
    assert len(pairs) == 2 + 4 and (pairs[:, 0] != pairs[:, 1]).all()
    assert len(set(map(tuple, pairs.tolist()))) == len(pairs)  # no pair twice
    # the cap holds, related pairs take precedence
    assert len(sample_pairs(labels, pairs_per_image=3, negative_ratio=2.0)) == 3
    # an image without any relation still teaches "no relation", one pair per ratio unit
    assert len(sample_pairs(torch.zeros(3, 3, dtype=torch.long), 10, 1.0)) == 1
    # several predicates on one pair: one of them
    both = pair_labels(2, torch.tensor([[0, 0, 1], [0, 1, 1]]))
    assert both[0, 1].item() in (1, 2)


def test_spatial_encoding_under_a_horizontal_flip():
    width, height = 100.0, 60.0
    subject = torch.tensor([[10.0, 10, 30, 40], [50.0, 5, 90, 55]])
    obj = torch.tensor([[60.0, 20, 80, 30], [55.0, 10, 70, 20]])

    def flip(b):
        return torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)

    enc = spatial_encoding(subject, obj, (int(height), int(width)))
    mirrored = spatial_encoding(flip(subject), flip(obj), (int(height), int(width)))
    assert enc.shape == (2, 12)
    # "left of" becomes "right of": the x offset changes sign, nothing else about the pair
    assert enc[0, 0] > 0 and torch.allclose(mirrored[:, 0], -enc[:, 0])
    assert torch.allclose(mirrored[:, 1:7], enc[:, 1:7])
    # the union's x corners mirror, its y corners and area stay
    assert torch.allclose(mirrored[:, 7], 1 - enc[:, 9]) and torch.allclose(
        mirrored[:, 9], 1 - enc[:, 7]
    )
    assert torch.allclose(mirrored[:, [8, 10, 11]], enc[:, [8, 10, 11]])
    # the second object lies inside the second subject: intersection over the object is 1
    assert enc[1, 6] == pytest.approx(1.0) and enc[0, 4] == 0  # the first pair is apart


def test_box_masks_mark_each_box_inside_the_union():
    union = torch.tensor([[0.0, 0, 8, 4]])
    left = box_masks(torch.tensor([[0.0, 0, 4, 4]]), union, 4)[0]
    assert torch.equal(left, torch.tensor([[1.0, 1, 0, 0]]).expand(4, 4))
    half = box_masks(torch.tensor([[0.0, 0, 3, 2]]), union, 4)[0]
    assert half[0].tolist() == pytest.approx([1, 0.5, 0, 0]) and half[2:].sum() == 0


def test_settings_refuse_bad_values():
    with pytest.raises(VisionLabError, match="features"):
        RelationHeadSettings(features=("visual", "colour"))
    with pytest.raises(VisionLabError, match="predictor"):
        RelationHeadSettings(predictor="language")
    with pytest.raises(VisionLabError, match="num_predicates"):
        build_model("relation_rcnn", **{**SMALL, "num_predicates": 0})


class _Annotations:
    """A dataset stand-in: annotations only."""

    def __init__(self, targets):
        self.targets = targets

    def __len__(self):
        return len(self.targets)

    def annotations(self, i):
        return self.targets[i]


def test_frequency_counts_the_training_set_only():
    model = build_model(
        "relation_freq", num_classes=3, **{k: v for k, v in SMALL.items() if k != "relation_head"}
    )
    train = _Annotations(
        [
            {"labels": torch.tensor([1, 2, 2]), "relations": torch.tensor([[0, 1, 1], [0, 2, 2]])},
            {"labels": torch.tensor([1, 2]), "relations": torch.tensor([[0, 1, 1]])},
        ]
    )
    val = _Annotations([{"labels": torch.tensor([2, 1]), "relations": torch.tensor([[0, 2, 1]])}])
    model.prepare_data([train, val])
    counts = model.roi_heads["relation"].frequency
    assert counts[1, 2].tolist() == [0, 0, 2, 1]  # (1 -> 2): p1 twice, p2 once
    # unrelated ordered pairs count as "no relation": classes (2, 1) twice and (2, 2) twice
    # in image 0, (2, 1) once in image 1
    assert counts[2, 1, 0] == 3 and counts[2, 2, 0] == 2
    assert counts.sum() == 3 + 5  # 3 relations, 5 unrelated ordered pairs; val not counted


def _scene(seed: int):
    """A 64 x 64 image with two or three squares, and which lies left of which."""
    g = torch.Generator().manual_seed(seed)
    image = torch.full((3, 64, 64), 0.1)
    n = 2 + seed % 2
    xs = torch.randperm(3, generator=g)[:n] * 20 + 2
    boxes, labels = [], []
    for k, x in enumerate(xs.tolist()):
        y = int(torch.randint(2, 44, (1,), generator=g))
        label = 1 + (k + seed) % 2
        image[label - 1, y : y + 16, x : x + 16] = 0.9
        boxes.append([x, y, x + 16, y + 16])
        labels.append(label)
    boxes = torch.tensor(boxes, dtype=torch.float32)
    rel = [
        [i, 0 if boxes[i, 0] < boxes[j, 0] else 1, j] for i in range(n) for j in range(n) if i != j
    ]
    target = {"boxes": boxes, "labels": torch.tensor(labels), "relations": torch.tensor(rel)}
    return image, target


def test_training_step_and_the_three_modes():
    torch.manual_seed(0)
    model = build_model("relation_rcnn", num_classes=3, **SMALL)
    images, targets = zip(*[_scene(s) for s in range(2)])
    losses = model(list(images), list(targets))
    assert {"loss_relation", "loss_classifier", "loss_objectness"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads["relation"].classifier.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        given = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        predcls = model(list(images), given=given, extras=("relation_pairs",))
        sgcls = model(list(images), given=[{"boxes": t["boxes"]} for t in targets])
        sgdet = model(list(images))
    for out, t in zip(predcls, targets):
        n = len(t["boxes"])
        assert torch.equal(out["boxes"], t["boxes"]) and torch.equal(out["labels"], t["labels"])
        assert out["pairs"].shape == (n * (n - 1), 2) and out["predicate_scores"].shape[1] == 3
        assert len(out["relations"]) == n * (n - 1)  # one predicate per pair
        assert (out["relation_scores"][:-1] >= out["relation_scores"][1:]).all()
    for out, t in zip(sgcls, targets):
        assert (
            torch.equal(out["boxes"], t["boxes"])
            and ((out["labels"] >= 1) & (out["labels"] <= 2)).all()
        )
        assert "pairs" not in out  # extras only when asked
    assert all("relations" in out for out in sgdet)


def test_overfits_the_relationships_of_a_few_images():
    torch.manual_seed(0)
    settings = {"width": 32, "embed_dim": 4}
    model = build_model("relation_rcnn", num_classes=3, **{**SMALL, "relation_head": settings})
    data = [_scene(s) for s in range(4)]
    images, targets = [d[0] for d in data], [d[1] for d in data]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(images, targets)["loss_relation"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        given = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        outs = model(images, given=given)
    hit = total = 0
    for out, t in zip(outs, targets):
        predicted = {(s, p, o) for s, p, o in out["relations"].tolist()}
        truth = {tuple(r) for r in t["relations"].tolist()}
        assert len(truth) > 0
        hit += len(predicted & truth)
        total += len(truth)
    assert hit / total == 1.0
