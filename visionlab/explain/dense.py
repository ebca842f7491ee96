"""FCN and the image classifiers explained: FCN's coarse score maps at strides 32 / 16 / 8
and the upsampled result, by the model's deconvolution and by bilinear interpolation of the
same coarse scores (Long et al., CVPR 2015, sec. 3.3 and 4.2); a classifier's first feature
maps and its top-k classes."""

from __future__ import annotations

from contextlib import ExitStack

import torch
import torch.nn.functional as F
from torch import Tensor

from visionlab.explain.common import Scene, Step, captured, figure, figure_image, no_ticks
from visionlab.models.classifier import ImageClassifier
from visionlab.models.fcn import FCN
from visionlab.viz import draw_classification, draw_semantic, voc_palette

SHOWN_CHANNELS = 8
TOPK = 5


def _class_cmap(num_classes: int):
    from matplotlib.colors import ListedColormap

    return ListedColormap([[v / 255 for v in voc_palette()[k]] for k in range(num_classes)])


@torch.no_grad()
def coarse_scores(model: FCN, image: Tensor) -> tuple[dict[int, Tensor], Tensor]:
    """FCN's score maps ``{stride: Tensor[K, h, w]}`` (32, then the fused 16 and 8 its
    skips make) of ``image [3, H, W]`` (padded inside the model to a multiple of 32), and its
    logits ``[K, H, W]``; read by forward hooks on the head and the upsampling layers."""
    stride = model.output_stride
    with ExitStack() as stack:
        s32 = stack.enter_context(captured(model.head))
        final = stack.enter_context(captured(model.upscore_final, inputs=True))
        if stride == 8:
            s16 = stack.enter_context(captured(model.upscore_pool4, inputs=True))
        logits = model(image[None])[0]
    maps = {32: s32[0][0], 16: final[0][0] if stride == 16 else None}
    if stride == 8:
        maps.update({16: s16[0][0], 8: final[0][0]})
    return {s: m.cpu() for s, m in maps.items() if m is not None}, logits.cpu()


def _coarse_step(model: FCN, scene: Scene, maps: dict[int, Tensor]) -> Step:
    k, (h, w) = model.num_classes, scene.size
    fig = figure(3.0 * len(maps), 6.0)
    axes = fig.subplots(2, len(maps), squeeze=False)
    for col, (stride, scores) in enumerate(maps.items()):
        scores = scores[:, : -(-h // stride), : -(-w // stride)]  # the image's cells
        probs = scores.softmax(dim=0)
        top, bottom = axes[0][col], axes[1][col]
        top.imshow(scores.argmax(0).numpy(), cmap=_class_cmap(k), vmin=0, vmax=k - 1)
        top.set_title(f"stride {stride}: {scores.shape[1]} x {scores.shape[2]} cells")
        heat = bottom.imshow(probs.amax(0).numpy(), cmap="viridis", vmin=0, vmax=1)
        bottom.set_title("best class probability")
        no_ticks(top, bottom)
    fig.colorbar(heat, ax=list(axes[1]), shrink=0.8)
    skips = {32: "", 16: " FCN-16s adds pool4's scores at stride 16;", 8: " FCN-8s also adds"
             " pool3's at stride 8;"}  # fmt: skip
    sentence = (
        "The coarse score maps: the classifier's fully connected layers, as convolutions, "
        f"score every cell of the stride-32 map;{skips[16] if 16 in maps else ''}"
        f"{skips[8] if 8 in maps else ''} top, each cell's best class (VOC colours, "
        "background black), bottom, its probability."
    )
    facts = {"strides": list(maps), "sizes": [[-(-h // s), -(-w // s)] for s in maps]}
    return Step("coarse_scores", "Coarse score maps", sentence, figure_image(fig), facts)


@torch.no_grad()
def fcn_steps(model: FCN, scene: Scene) -> list[Step]:
    """FCN: coarse score maps, the upsampled result, and (for a deconvolution model) bilinear
    interpolation of the same coarse scores and the difference."""
    maps, logits = coarse_scores(model, scene.image)
    stride, (h, w) = model.output_stride, scene.size
    own = logits.argmax(0)
    deconv = model.upsample_mode == "deconv"
    how = (
        "the model's learned deconvolution (initialised to bilinear interpolation)"
        if deconv
        else "fixed bilinear interpolation, the model's choice (no deconvolution to compare)"
    )
    steps = [
        _coarse_step(model, scene, maps),
        Step(
            "upsampled_deconv" if deconv else "upsampled_bilinear",
            "Upsampled" + (" by deconvolution" if deconv else " by interpolation"),
            f"The stride-{stride} scores upsampled x{stride} to the image by {how}; each "
            "pixel takes its best class.",
            draw_semantic(scene.image, own, scene.classes),
            {"classes_present": sorted(int(v) for v in own.unique())},
        ),
    ]
    if not deconv:
        return steps
    # the very scores the deconvolution upsampled (the padded input's map), interpolated
    bilinear = F.interpolate(
        maps[stride][None], scale_factor=stride, mode="bilinear", align_corners=False
    )[0, :, :h, :w]
    other = bilinear.argmax(0)
    differ = own != other
    gap = (logits - bilinear).abs().amax(0)
    steps.append(
        Step(
            "upsampled_bilinear",
            "Upsampled by bilinear interpolation",
            f"The same stride-{stride} scores upsampled x{stride} by fixed bilinear "
            "interpolation instead, for comparison.",
            draw_semantic(scene.image, other, scene.classes),
            {"classes_present": sorted(int(v) for v in other.unique())},
        )
    )
    fig = figure(10.0, 4.4)
    left, right = fig.subplots(1, 2)
    heat = left.imshow(gap.numpy(), cmap="magma")
    left.set_title("largest score difference")
    fig.colorbar(heat, ax=left, shrink=0.8)
    right.imshow(differ.numpy(), cmap="gray", vmin=0, vmax=1)
    right.set_title(f"pixels whose class differs: {int(differ.sum())}")
    no_ticks(left, right)
    steps.append(
        Step(
            "deconv_vs_bilinear",
            "Deconvolution vs interpolation",
            f"Where the two upsamplings disagree: the largest difference of any class's score "
            f"per pixel (max {float(gap.max()):.3g}) and the {int(differ.sum())} of {h * w} "
            "pixels whose best class changes (white). An untrained deconvolution still equals "
            "bilinear interpolation except at the border; training moves it away.",
            figure_image(fig),
            {"differing_pixels": int(differ.sum()), "max_score_difference": float(gap.max())},
        )
    )
    return steps


@torch.no_grad()
def classifier_steps(model: ImageClassifier, scene: Scene) -> list[Step]:
    """A classifier: its stride-4 and stride-8 feature maps, then the top-k classes."""
    x = scene.image[None]
    # one backbone pass: the early maps shown and the last one the head classifies
    maps = model.feature_maps(x, strides=(4, 8, model.backbone.out_stride))
    steps = []
    for stride, fmap in ((4, maps["stride4"][0]), (8, maps["stride8"][0])):
        shown = fmap[:SHOWN_CHANNELS].cpu()
        cols = 4
        rows = -(-len(shown) // cols)
        fig = figure(2.0 * cols, 2.0 * rows)
        axes = fig.subplots(rows, cols, squeeze=False)
        for k, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if k < len(shown):
                ax.imshow(shown[k].numpy(), cmap="viridis")
                ax.set_title(f"channel {k}", fontsize=9)
        sentence = (
            f"Feature maps at stride {stride} ({fmap.shape[0]} channels of "
            f"{fmap.shape[1]} x {fmap.shape[2]}; the first {len(shown)} shown, each on its own "
            "colour scale): what the early convolutions respond to, still laid out like the "
            "image."
        )
        facts = {"channels": int(fmap.shape[0]), "size": list(fmap.shape[1:])}
        steps.append(Step(f"features_stride{stride}", f"Stride-{stride} features", sentence,
                          figure_image(fig), facts))  # fmt: skip
    logits = model.forward_head(maps[f"stride{model.backbone.out_stride}"])
    probs = logits[0].softmax(0).cpu()
    scores, labels = probs.topk(min(TOPK, len(probs)))
    truth = scene.target.get("labels") if scene.target else None
    true_label = int(truth) if truth is not None else None
    sentence = (
        f"Global pooling, the head and a softmax give {len(probs)} class probabilities; the "
        f"top {len(labels)} are drawn as bars"
        + (
            " and the true class is named below them (* when it is among them)."
            if true_label is not None
            else "."
        )
    )
    picture = draw_classification(scene.image, labels, scores, scene.classes, true_label=true_label)
    facts = {"labels": labels.tolist(), "scores": scores.tolist()}
    steps.append(Step("top_k", "Top classes", sentence, picture, facts))
    return steps
