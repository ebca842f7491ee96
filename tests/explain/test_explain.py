"""`visionlab explain`: for each family, numbered PNGs that open as images, an index.html
showing them in order with a sentence each, and the numbers behind a few pictures checked
against the model (anchors per location, YOLO's responsible cells, SPP's bins, FCN's two
upsamplings); the errors a user can make, in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from untrained import save_untrained

from visionlab.data.scenes import PREDICATES, SCENE_CLASSES

N = len(SCENE_CLASSES) + 1
# untrained detectors keep their 10 best detections (scores are low and alike)
DET = {"num_classes": N, "backbone_width": 4, "box_head": {"fc_width": 16}, "score_thresh": 0.0,
       "detections_per_img": 10}  # fmt: skip
# family -> (model, task, tiny settings)
FAMILIES = {
    "rcnn": ("rcnn", "detection", {"num_classes": N, "backbone_width": 4, "input_size": 32,
                                   "fc_width": 16, "score_thresh": 0.0}),
    "sppnet": ("sppnet", "detection", {"num_classes": N, "backbone_width": 4, "scales": [64],
                                       "feature_stride": 8, "fc_width": 16}),
    "fast_rcnn": ("fast_rcnn", "detection", {**DET, "feature_stride": 8}),
    "faster_rcnn": ("faster_rcnn", "detection", DET),
    "mask_rcnn": ("mask_rcnn", "instance", {**DET, "detections_per_img": 4,
                                            "mask_head": {"width": 8, "num_convs": 1}}),
    "relation_rcnn": ("relation_rcnn", "relation", {
        **DET, "num_predicates": len(PREDICATES), "relation_head": {"width": 8, "embed_dim": 4}}),
    "yolo": ("yolo", "detection", {"num_classes": N, "backbone_width": 4, "input_size": 64,
                                   "head": "conv", "feature_stride": 8}),
    "fcn": ("fcn8s", "segmentation", {"num_classes": N, "fc_width": 16}),
    "classifier": ("tiny_cnn", "classification", {"num_classes": N - 1, "width": 4}),
}  # fmt: skip
OBJECTS_IMAGE = 1  # an image of the scenes copy with several objects


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from visionlab.data.scenes import render_scenes

    root = tmp_path_factory.mktemp("explain") / "sc"
    return render_scenes(root, n_train=1, n_val=3, size=64, progress=False, workers=0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for family, (name, task, args) in FAMILIES.items():
        predicates = list(PREDICATES) if task == "relation" else []
        out[family] = save_untrained(
            root / f"{family}.pt",
            name,
            task,
            args,
            classes=list(SCENE_CLASSES),
            predicates=predicates,
        )
    _trained_like_fcn(out["fcn"])
    return out


def _trained_like_fcn(path: Path) -> None:
    """Give the untrained FCN what training gives it: scores that are not all zero (its score
    layers start at zero) and deconvolutions moved away from bilinear interpolation."""
    from visionlab.engine.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(path)
    generator = torch.Generator().manual_seed(0)
    for key, value in state["model"].items():
        if key.startswith(("head.score_fr", "score_pool", "upscore")):
            noise = torch.randn(value.shape, generator=generator) * 0.05
            state["model"][key] = value + noise
    save_checkpoint(path, state)


def _image(scenes: Path, index: int) -> Path:
    return sorted((scenes / "images" / "val").glob("*.png"))[index]


def _explain(*args: str) -> int:
    from visionlab.cli import main

    return main(["explain", *map(str, args)])


def _check_report(out: Path) -> list[dict]:
    """The numbered PNGs open as images; index.html shows each, in order, after its sentence;
    returns steps.json's steps."""
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and [p[:3] for p in pngs] == [f"{k:02d}_" for k in range(1, len(pngs) + 1)]
    for name in pngs:
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) >= 64
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page  # nothing external
    sections = re.findall(r"<section.*?</section>", page, flags=re.S)
    assert [re.search(r'<img src="([^"]+)"', s).group(1) for s in sections] == pngs
    steps = json.loads((out / "steps.json").read_text())["steps"]
    assert [s["file"] for s in steps] == pngs
    for section, step in zip(sections, steps):
        sentence = re.search(r"<p>(.*?)</p>", section, flags=re.S).group(1)
        assert len(sentence) > 40 and sentence.rstrip().endswith(".")
        assert step["sentence"].startswith(sentence[:20].replace("&#x27;", "'"))
    return steps


def _step(steps: list[dict], name: str) -> dict:
    return next(s for s in steps if s["file"][3:] == f"{name}.png")


EXPECTED = {
    "rcnn": ["proposals", "scored_regions", "warped_regions", "detections"],
    "sppnet": ["proposals", "scored_regions", "pyramid_bins", "detections"],
    "fast_rcnn": ["proposals", "rois_kept", "detections"],
    "faster_rcnn": ["anchors", "anchor_labels", "proposals_before_nms", "proposals_after_nms",
                    "rois_kept", "detections"],
    "mask_rcnn": ["anchors", "anchor_labels", "proposals_before_nms", "proposals_after_nms",
                  "rois_kept", "mask_grids", "detections"],
    "relation_rcnn": ["anchors", "anchor_labels", "proposals_before_nms",
                      "proposals_after_nms", "rois_kept", "detections", "relations"],
    "yolo": ["grid", "predictors", "class_confidence", "detections"],
    "fcn": ["coarse_scores", "upsampled_deconv", "upsampled_bilinear", "deconv_vs_bilinear"],
    "classifier": ["features_stride4", "features_stride8", "top_k"],
}  # fmt: skip


# families explained on a dataset image, against its ground truth (the others on a file)
WITH_GROUND_TRUTH = ("faster_rcnn", "yolo")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_writes_numbered_steps_and_index(
    family: str, checkpoints: dict, scenes: Path, tmp_path: Path, one_thread: None
) -> None:
    out = tmp_path / "explained"
    threshold = "0" if family == "mask_rcnn" else "0.3"  # untrained scores are low
    if family in WITH_GROUND_TRUTH:
        given = ("--data", scenes, "--index", OBJECTS_IMAGE)
    else:
        given = (_image(scenes, OBJECTS_IMAGE),)
    args = (*given, "--out", out, "--score-threshold", threshold)
    assert _explain(checkpoints[family], *args) == 0
    steps = _check_report(out)
    assert [s["file"][3:-4] for s in steps] == EXPECTED[family]
    check = CONTENT_CHECKS.get(family)
    if check is not None:
        check(steps, checkpoints[family], scenes, out)


def _check_rcnn(steps: list[dict], *_: object) -> None:
    warped = _step(steps, "warped_regions")
    assert warped["crop_size"] == 32 and warped["crops"] == min(16, steps[0]["proposals"])


def _check_mask_rcnn(steps: list[dict], *_: object) -> None:
    grids = _step(steps, "mask_grids")
    probabilities = torch.tensor(grids["probabilities"])
    assert grids["mask_size"] == 28 and grids["masks"] == 4  # detections_per_img
    assert (
        probabilities.shape == (4, 28, 28) and 0 <= probabilities.min() <= probabilities.max() <= 1
    )


def _check_classifier(steps: list[dict], *_: object) -> None:
    scores = _step(steps, "top_k")["scores"]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5


def _check_faster_rcnn(steps: list[dict], _ckpt: Path, scenes: Path, _out: Path) -> None:
    """The anchors of one location are every size x ratio, centred on one point; every
    anchor is labelled once, against the ground truth; the objects' best anchors are
    positive."""
    from visionlab.data.datasets import load_dataset

    anchors = _step(steps, "anchors")
    assert anchors["anchors_per_location"] == 9 == anchors["anchors_drawn"]
    assert "9 anchors per location" in anchors["sentence"]
    boxes = torch.tensor(anchors["anchors"])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert torch.allclose(centres, centres[0].expand_as(centres))
    shapes = {(round(float(w)), round(float(h))) for w, h in boxes[:, 2:] - boxes[:, :2]}
    assert len(shapes) == 9
    objects = len(load_dataset(scenes, "val").annotations(OBJECTS_IMAGE)["boxes"])
    labels = _step(steps, "anchor_labels")
    assert objects >= 2 and f"{objects} ground-truth boxes" in labels["sentence"]
    assert labels["objects_are_ground_truth"]
    assert labels["positives"] + labels["negatives"] + labels["ignored"] == 4 * 4 * 9
    assert labels["positives"] >= 1 and labels["sampled_positives"] == labels["positives"]
    before, after = _step(steps, "proposals_before_nms"), _step(steps, "proposals_after_nms")
    assert before["proposals"] == 4 * 4 * 9 >= after["proposals"]


def _check_yolo(steps: list[dict], _ckpt: Path, scenes: Path, _out: Path) -> None:
    """The responsible cells are the cells of the ground-truth centres."""
    from visionlab.data.datasets import load_dataset

    grid = steps[0]
    S = grid["S"]
    gt = load_dataset(scenes, "val").annotations(OBJECTS_IMAGE)["boxes"]  # 64 px: as the model
    expected = {
        (int((y1 + y2) / 2 * S // 64), int((x1 + x2) / 2 * S // 64))
        for x1, y1, x2, y2 in gt.tolist()
    }
    assert S == 8 and len(gt) >= 2
    assert {tuple(c) for c in grid["responsible_cells"]} == expected


def _check_sppnet(steps: list[dict], ckpt: Path, scenes: Path, _out: Path) -> None:
    """The maximum of the feature map over each drawn bin is what SPP pooled there."""
    from visionlab.data.imageio import load_image
    from visionlab.engine.api import load
    from visionlab.engine.common import make_transform
    from visionlab.ops import spp_rois

    bins = _step(steps, "pyramid_bins")
    model = load(ckpt)
    transform = make_transform("detection", False, 64, {})  # as the command prepares it
    image = transform(load_image(_image(scenes, OBJECTS_IMAGE)), {})[0]
    with torch.no_grad():
        fmap, factors = model.regions.feature_map(model.backbone, [image], bins["scale"])
        box = torch.tensor(bins["box"]) * factors[0]
        pooled = spp_rois(fmap, [box[None]], 1.0 / bins["stride"], bins["levels"])[0]
    per_level = []
    for level in bins["bins"]:
        maxima = []
        for x1, y1, x2, y2 in torch.tensor(level).reshape(-1, 4).tolist():
            cells = fmap[0, :, y1:y2, x1:x2]
            empty = cells.numel() == 0
            maxima.append(torch.zeros(fmap.shape[1]) if empty else cells.amax(dim=(1, 2)))
        per_level.append(torch.stack(maxima, 1).flatten())  # channel-major, as SPP lays out
    assert torch.allclose(pooled, torch.cat(per_level))


def _check_fcn(steps: list[dict], _ckpt: Path, _scenes: Path, out: Path) -> None:
    assert _step(steps, "coarse_scores")["strides"] == [32, 16, 8]
    gap = _step(steps, "deconv_vs_bilinear")
    assert gap["max_score_difference"] > 0 and gap["differing_pixels"] > 0
    with (
        Image.open(out / "02_upsampled_deconv.png") as a,
        Image.open(out / "03_upsampled_bilinear.png") as b,
    ):
        assert a.size != b.size or a.tobytes() != b.tobytes()


def _check_relation(steps: list[dict], *_: object) -> None:
    relations = _step(steps, "relations")
    assert relations["pairs"] == 10 * 9 and relations["relations"]
    assert all(r["predicate"] in PREDICATES for r in relations["relations"])


CONTENT_CHECKS = {
    "rcnn": _check_rcnn,
    "sppnet": _check_sppnet,
    "faster_rcnn": _check_faster_rcnn,
    "mask_rcnn": _check_mask_rcnn,
    "relation_rcnn": _check_relation,
    "yolo": _check_yolo,
    "fcn": _check_fcn,
    "classifier": _check_classifier,
}


def test_errors_are_one_line(
    checkpoints: dict, scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt, image = checkpoints["classifier"], _image(scenes, 0)
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("the user's")
    cases = [
        ((tmp_path / "missing.pt", image, "--out", tmp_path / "a"), "no such checkpoint"),
        ((ckpt, tmp_path / "missing.png", "--out", tmp_path / "b"), "no such image"),
        ((ckpt, not_image, "--out", tmp_path / "c"), "notes.png"),
        ((ckpt, "--data", scenes, "--index", "99", "--out", tmp_path / "d"), "out of range"),
        ((ckpt, image, "--out", full), "not empty"),
        ((ckpt, "--out", tmp_path / "e"), "give an IMAGE or --data"),
    ]
    for args, words in cases:
        capsys.readouterr()
        assert _explain(*args) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err and "Traceback" not in err
    assert (full / "mine.txt").read_text() == "the user's" and len(list(full.iterdir())) == 1


def test_unknown_family_is_refused() -> None:
    from visionlab.errors import VisionLabError
    from visionlab.explain import family_of

    with pytest.raises(VisionLabError, match="no explanation"):
        family_of(torch.nn.Linear(2, 2))
