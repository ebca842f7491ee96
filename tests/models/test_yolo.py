"""YOLO v1 (and its YOLO9000 options): grid targets, loss terms, box coding, contract, overfit."""

from __future__ import annotations

import pytest
import torch

from visionlab.errors import VisionLabError
from visionlab.models.yolo import yolo
from visionlab.models.yolo_loss import (
    YoloLossConfig,
    assign,
    cells_of,
    decode_prior,
    decode_v1,
    encode_prior,
    encode_v1,
    kmeans_priors,
    pair_iou,
    responsible_predictors,
    yolo_v1_loss,
)

SIZE = (112, 112)  # S = 7: 16 px cells


def _grid_with(boxes_by_slot: dict[tuple[int, int, int], list[float]], S: int = 7, B: int = 2):
    """Decoded predictions ``[1, S, S, B, 4]``: far-away dummies except the given slots."""
    pred = torch.zeros(1, S, S, B, 4)
    for (r, c, b), box in boxes_by_slot.items():
        pred[0, r, c, b] = torch.tensor(box)
    return pred


def test_cell_of_each_centre():
    boxes = torch.tensor([[16.0, 32.0, 32.0, 48.0], [0.0, 0.0, 112.0, 112.0], [100, 100, 112, 112]])
    # centres (24, 40) -> row 2, col 1; (56, 56) -> 3, 3; (106, 106) -> 6, 6
    assert cells_of(boxes, SIZE, 7).tolist() == [[2, 1], [3, 3], [6, 6]]


def test_responsible_predictor_is_the_best_iou_in_the_cell():
    gt = torch.tensor([[16.0, 32.0, 32.0, 48.0]])  # cell (2, 1)
    pred = _grid_with({(2, 1, 0): [0.0, 0.0, 8.0, 8.0], (2, 1, 1): [18.0, 34.0, 32.0, 48.0]})
    t = assign([gt], [torch.tensor([3])], pred, SIZE)
    assert (t.row.tolist(), t.col.tolist(), t.pred.tolist()) == ([2], [1], [1])
    # the other predictor takes over when it overlaps better
    pred[0, 2, 1, 0] = torch.tensor([16.0, 32.0, 32.0, 48.0])
    assert assign([gt], [torch.tensor([3])], pred, SIZE).pred.tolist() == [0]


def test_objects_sharing_a_cell_get_distinct_predictors_and_the_extra_one_is_dropped():
    cells = torch.tensor([[2, 1], [2, 1], [2, 1], [0, 0]])
    quality = torch.tensor([[0.9, 0.8], [0.7, 0.6], [0.1, 0.05], [0.0, 0.0]])
    # object 0 takes predictor 0 (best pair), object 1 the free predictor 1, object 2 none
    assert responsible_predictors(cells, quality).tolist() == [0, 1, -1, 0]


def test_v1_round_trips():
    torch.manual_seed(0)
    params = torch.rand(2, 7, 7, 2, 4) * 0.98 + 0.01  # offsets in (0, 1), sqrt sizes
    boxes = decode_v1(params, SIZE)
    flat = boxes.reshape(-1, 4)
    cells = cells_of(flat, SIZE, 7)
    rows = torch.arange(7).view(1, 7, 1, 1).expand(2, 7, 7, 2).reshape(-1)
    cols = torch.arange(7).view(1, 1, 7, 1).expand(2, 7, 7, 2).reshape(-1)
    assert cells.tolist() == torch.stack([rows, cols], 1).tolist()  # centre stays in its cell
    torch.testing.assert_close(encode_v1(flat, cells, SIZE, 7), params.reshape(-1, 4))
    # and boxes -> parameters -> boxes
    gt = torch.tensor([[3.0, 5.0, 40.0, 30.0], [50.0, 60.0, 111.0, 70.0]])
    enc = encode_v1(gt, cells_of(gt, SIZE, 7), SIZE, 7)
    grid = torch.zeros(7, 7, 1, 4)
    for (r, c), p in zip(cells_of(gt, SIZE, 7).tolist(), enc):
        grid[r, c, 0] = p
    decoded = decode_v1(grid, SIZE)
    got = torch.stack([decoded[r, c, 0] for r, c in cells_of(gt, SIZE, 7).tolist()])
    torch.testing.assert_close(got, gt)


def test_prior_round_trip_and_kmeans():
    priors = torch.tensor([[10.0, 12.0], [30.0, 20.0]])
    gt = torch.tensor([[3.0, 5.0, 40.0, 30.0], [50.0, 60.0, 58.0, 70.0]])
    cells = cells_of(gt, SIZE, 7)
    which = torch.tensor([1, 0])
    enc = encode_prior(gt, cells, priors[which], SIZE, 7)
    grid = torch.zeros(7, 7, 2, 4)
    for (r, c), b, p in zip(cells.tolist(), which.tolist(), enc):
        grid[r, c, b] = p
    decoded = decode_prior(grid, priors, SIZE)
    got = torch.stack([decoded[r, c, b] for (r, c), b in zip(cells.tolist(), which.tolist())])
    torch.testing.assert_close(got, gt)
    sizes = torch.tensor([[8.0, 8.0], [9.0, 8.0], [8.0, 9.0], [40.0, 40.0], [42.0, 38.0]])
    want = torch.tensor([[25.0 / 3, 25.0 / 3], [41.0, 39.0]])  # the two clusters' means
    torch.testing.assert_close(kmeans_priors(sizes, 2), want)


def test_decoding_gathered_boxes_equals_gathering_decoded_boxes():
    """postprocess decodes only the boxes that pass the threshold: same boxes as decoding all."""
    torch.manual_seed(0)
    S, B = 5, 3
    params = torch.rand(S, S, B, 4) * 0.98 + 0.01
    priors = torch.tensor([[10.0, 12.0], [30.0, 20.0], [6.0, 9.0]])
    pick = torch.tensor([0, 7, 31, 74, 40])  # flat indices into S * S * B
    cell = pick // B
    cells = torch.stack([cell // S, cell % S], 1)
    gathered = params.reshape(-1, 4)[pick]
    torch.testing.assert_close(
        decode_v1(gathered, SIZE, cells=cells, S=S), decode_v1(params, SIZE).reshape(-1, 4)[pick]
    )
    torch.testing.assert_close(
        decode_prior(gathered, priors[pick % B], SIZE, cells=cells, S=S),
        decode_prior(params, priors, SIZE).reshape(-1, 4)[pick],
    )
    with pytest.raises(ValueError, match="needs S"):
        decode_v1(gathered, SIZE, cells=cells)


def test_v1_loss_terms_match_the_papers_sum():
    """Eq. 3 of the paper, written out with loops over cells and predictors."""
    torch.manual_seed(0)
    S, B, C, n = 3, 2, 2, 2
    size = (48, 48)
    params = torch.rand(n, S, S, B, 4)
    conf = torch.rand(n, S, S, B)
    probs = torch.rand(n, S, S, C)
    gts = [torch.tensor([[2.0, 2.0, 14.0, 12.0], [4.0, 3.0, 10.0, 15.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([1, 2]), torch.zeros(0, dtype=torch.long)]
    decoded = decode_v1(params, size)
    t = assign(gts, labels, decoded, size)
    assert t.row.tolist() == [0, 0] and sorted(t.pred.tolist()) == [0, 1]  # one shared cell
    cfg = YoloLossConfig()
    got = yolo_v1_loss(params, conf, probs, t, size, cfg)

    xy = wh = obj = noobj = cls = 0.0
    for i in range(n):
        for r in range(S):
            for c in range(S):
                here = [
                    k for k in range(len(t.image)) if (t.image[k], t.row[k], t.col[k]) == (i, r, c)
                ]
                for b in range(B):
                    mine = [k for k in here if t.pred[k] == b]
                    if not mine:
                        noobj += conf[i, r, c, b] ** 2
                        continue
                    k = mine[0]
                    box = t.boxes[k]
                    cx, cy = (box[0] + box[2]) / 2 / 16, (box[1] + box[3]) / 2 / 16
                    p = params[i, r, c, b]
                    xy += (p[0] - (cx - c)) ** 2 + (p[1] - (cy - r)) ** 2
                    wh += (p[2] - ((box[2] - box[0]) / 48).sqrt()) ** 2
                    wh += (p[3] - ((box[3] - box[1]) / 48).sqrt()) ** 2
                    iou = pair_iou(decoded[i, r, c, b], box)
                    obj += (conf[i, r, c, b] - iou) ** 2
                if here:
                    target = torch.zeros(C)
                    for k in here:
                        target[t.labels[k] - 1] += 1 / len(here)
                    cls += ((probs[i, r, c] - target) ** 2).sum()
    want = {
        "loss_box_xy": 5 * xy / n,
        "loss_box_wh": 5 * wh / n,
        "loss_objectness": obj / n,
        "loss_noobject": 0.5 * noobj / n,
        "loss_classifier": cls / n,
    }
    assert set(got) == set(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], torch.as_tensor(value), msg=key)


def test_contract_sizes_and_grid_keys():
    torch.manual_seed(0)
    # score_thresh 0: the untrained model's tiny scores still make detections to check
    model = yolo(
        num_classes=4, input_size=64, S=4, fc_hidden=32, head_channels=32, score_thresh=0.0
    )
    assert model.S == 4 and model.head.out.out_features == 4 * 4 * (2 * 5 + 3)
    images = [torch.rand(3, 64, 64), torch.rand(3, 50, 80)]
    targets = [
        {"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    losses = model(images, targets)
    assert set(losses) == {
        "loss_box_xy",
        "loss_box_wh",
        "loss_objectness",
        "loss_noobject",
        "loss_classifier",
    }
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        plain = model(images)
        gridded = model(images, extras=("grid",))
    assert set(plain[0]) == {"boxes", "labels", "scores"}
    assert len(plain[0]["boxes"]) > 0 and len(plain[1]["boxes"]) > 0
    wide = plain[1]["boxes"]  # inside the 80 x 50 image, in its pixels
    assert wide.min() >= 0 and wide[:, 2].max() <= 80.01 and wide[:, 3].max() <= 50.01
    assert torch.equal(gridded[0]["boxes"], plain[0]["boxes"])
    cells = gridded[0]["cells"]
    assert gridded[0]["grid_size"] == 4 and cells.shape == (len(plain[0]["boxes"]), 2)
    assert cells.min() >= 0 and cells.max() < 4


def test_options_and_bad_arguments():
    conv = yolo(num_classes=3, input_size=64, head="conv", feature_stride=16, head_convs=1)
    assert conv.S == 4
    anchored = yolo(
        num_classes=3,
        input_size=64,
        head="conv",
        feature_stride=16,
        head_convs=1,
        anchors=[[8, 8], [20, 20], [40, 30]],
        multiscale=[48, 64, 80],
    )
    assert anchored.B == 3 and anchored.head.out.out_channels == 3 * (5 + 2)
    images = [torch.rand(3, 64, 64)] * 2
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([2])}] * 2
    assert torch.isfinite(sum(anchored(images, targets).values()))
    with pytest.raises(VisionLabError, match="multiscale needs head='conv'"):
        yolo(num_classes=3, input_size=64, multiscale=[64, 96])
    with pytest.raises(VisionLabError, match="S = 4"):
        yolo(num_classes=3, input_size=64, head="conv", feature_stride=16, S=7)
    with pytest.raises(VisionLabError, match="anchors"):
        yolo(num_classes=3, input_size=64, B=2, anchors=[[8, 8]])
    frozen = yolo(num_classes=3, input_size=64, head="conv", feature_stride=8, frozen_stride=4)
    losses = frozen(images, targets)
    sum(losses.values()).backward()
    stem = [p for m in frozen.backbone.stage_modules(4) for p in m.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in stem)
    assert all(p.grad is not None for p in frozen.head.parameters())
    with pytest.raises(VisionLabError, match="frozen_stride"):  # nothing left to train
        yolo(num_classes=3, input_size=64, head="conv", feature_stride=8, frozen_stride=8)


@pytest.mark.parametrize("anchors", [None, [[12.0, 12.0], [24.0, 24.0]]])
def test_overfits_a_few_images(anchors):
    """Two 64 px images, four objects: after a short training they are found again."""
    torch.manual_seed(0)
    images, targets = [], []
    boxes_per_image = [
        [[6.0, 8.0, 26.0, 28.0, 1], [36.0, 30.0, 60.0, 56.0, 2]],
        [[10.0, 36.0, 30.0, 60.0, 3], [34.0, 4.0, 54.0, 24.0, 1]],
    ]
    colours = {1: (1.0, 0.2, 0.2), 2: (0.2, 1.0, 0.2), 3: (0.2, 0.2, 1.0)}
    for objects in boxes_per_image:
        im = torch.full((3, 64, 64), 0.1)
        for x1, y1, x2, y2, lab in objects:
            im[:, int(y1) : int(y2), int(x1) : int(x2)] = torch.tensor(colours[lab]).view(3, 1, 1)
        images.append(im)
        t = torch.tensor(objects)
        targets.append({"boxes": t[:, :4], "labels": t[:, 4].long()})
    model = yolo(
        num_classes=4,
        input_size=64,
        head="conv",
        feature_stride=16,
        head_convs=1,
        head_channels=64,
        anchors=anchors,
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        opt.zero_grad()
        sum(model(images, targets).values()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    from visionlab.ops.boxes import box_iou

    for out, t in zip(outputs, targets):
        top = out["scores"] >= 0.3
        assert top.sum() >= len(t["boxes"])
        iou = box_iou(t["boxes"], out["boxes"][top])
        best = iou.argmax(1)
        assert (iou.max(1).values > 0.5).all()
        assert out["labels"][top][best].tolist() == t["labels"].tolist()


def test_predict_show_grid_writes_plain_json(tmp_path):
    """`visionlab predict --show-grid` on a YOLO checkpoint: grid drawing, cells as plain lists;
    a model without a grid refuses the flag."""
    import json

    from PIL import Image

    from visionlab.cli import main
    from visionlab.engine.checkpoint import save_checkpoint
    from visionlab.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(
        "yolo", num_classes=3, input_size=64, head="conv", feature_stride=16, head_convs=1,
        score_thresh=0.0,
    )  # fmt: skip
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    args = {k: v for k, v in model.build_args.items() if k != "name"}
    meta = {"model_name": "yolo", "model_args": args, "task": "detection", "image_size": 64}
    save_checkpoint(ckpt, {"model": model.state_dict(), **meta, "classes": ["a", "b"]})
    image = tmp_path / "x.png"
    Image.new("RGB", (80, 60), (200, 30, 30)).save(image)
    out = tmp_path / "pred"
    argv = ["predict", str(ckpt), str(image), "--out", str(out), "--show-grid"]
    assert main([*argv, "--score-threshold", "0"]) == 0
    record = json.loads((out / "predictions.json").read_text())["predictions"][0]
    assert record["grid_size"] == 4 and record["detections"]
    assert all(len(d["cell"]) == 2 and isinstance(d["cell"][0], int) for d in record["detections"])
    assert (out / record["drawing"]).is_file()
    # without the flag: no grid keys
    assert main(["predict", str(ckpt), str(image), "--out", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "predictions.json").read_text())["predictions"][0]
    assert "grid_size" not in plain
