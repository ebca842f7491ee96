"""R-CNN and SPPNet explained: selective-search proposals, the regions' class scores, the
warped crops R-CNN classifies, SPPNet's pyramid bins over the feature map and the image for
one region, and the detections after box regression and NMS."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from visionlab.explain.common import (
    SHOWN_PROPOSALS,
    Scene,
    Step,
    cpu_tensors,
    detections_step,
    figure,
    figure_image,
    image_array,
    no_ticks,
    search_how,
)
from visionlab.models.rcnn import RegionDetector, warp_regions
from visionlab.viz import (
    class_name,
    draw_detections,
    draw_proposals,
    image_grid,
    to_pil,
    upscale,
)

SHOWN_REGIONS = 16  # the best-scoring regions a picture shows


def proposals_step(scene: Scene, boxes: Tensor, how: str) -> Step:
    """Selective search's regions, the first :data:`SHOWN_PROPOSALS` of its order drawn."""
    shown = min(len(boxes), SHOWN_PROPOSALS)
    sentence = (
        f"Selective search ({how}) proposes {len(boxes)} regions, class-agnostic, from colour "
        f"and texture groupings alone; the first {shown} of its order are drawn, warm "
        "colours first."
    )
    picture = draw_proposals(scene.image, boxes, max_boxes=SHOWN_PROPOSALS)
    return Step("proposals", "Region proposals", sentence, picture, {"proposals": len(boxes)})


def _search_how(model: RegionDetector) -> str:
    s = model.proposal_settings
    return search_how(s.mode, s.search_size)


@torch.no_grad()
def _scored(
    model: RegionDetector, scene: Scene, boxes: Tensor
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Each region's best class score and label (1..C), before box regression and NMS, and
    the detections, made from the same regions and scores as :meth:`RegionDetector.detect`
    makes them (CPU tensors)."""
    pooled = model.pool_features([scene.image], [boxes])
    scores = model.class_scores(model.fc_features(pooled))  # [K, C]
    refined = model.regress_boxes(pooled, boxes)
    detections = cpu_tensors(model.postprocess(refined, scores, scene.size))
    best, index = scores.cpu().max(dim=1)
    return best, index + 1, detections


def _score_source(model: RegionDetector) -> str:
    if bool(model.svm_fitted):
        return "its linear SVMs (sigmoid of the margins)"
    return "the fine-tuned softmax (no SVMs fitted yet)"


def scored_regions_step(
    model: RegionDetector, scene: Scene, boxes: Tensor, best: Tensor, labels: Tensor
) -> tuple[Step, Tensor]:
    """The :data:`SHOWN_REGIONS` best-scoring regions with their best class; returns the
    step and their indices into ``boxes``, best first."""
    top = best.argsort(descending=True)[:SHOWN_REGIONS]
    picture = draw_detections(scene.image, boxes[top], labels[top], best[top], scene.classes)
    sentence = (
        f"Every region is scored for each class by {_score_source(model)}; the {len(top)} "
        "regions with the highest score are drawn with their best class, before box "
        "regression and non-maximum suppression."
    )
    facts = {"regions_scored": len(boxes), "shown": len(top)}
    return Step("scored_regions", "Scored regions", sentence, picture, facts), top


def rcnn_steps(model: RegionDetector, scene: Scene) -> list[Step]:
    """R-CNN: proposals, scored regions, the warped crops, detections."""
    proposed = model.propose(scene.image)
    boxes = proposed.cpu()
    best, labels, detections = _scored(model, scene, proposed)
    scored, top = scored_regions_step(model, scene, boxes, best, labels)
    size, context = model.regions.input_size, model.regions.context
    steps = [proposals_step(scene, boxes, _search_how(model)), scored]
    if len(top):
        crops = warp_regions(scene.image, boxes[top], size=size, context=context)
        tiles = [upscale(to_pil(c), 4 * size if size < 128 else size)[0] for c in crops]
        titles = [
            f"{k + 1}. {class_name(int(labels[i]), scene.classes, 1)} {float(best[i]):.2f}"
            for k, i in enumerate(top.tolist())
        ]
        sentence = (
            f"What the CNN sees: each region is warped to {size} x {size} px, dilated by "
            f"{context} px of context at that scale (R-CNN, appendix A), and run through the "
            f"whole network on its own; the {len(top)} best regions are shown (enlarged) with "
            "their best class score."
        )
        facts = {"crop_size": size, "context": context, "crops": len(top)}
        picture = image_grid(tiles, cols=4, titles=titles)
        steps.append(Step("warped_regions", "Warped regions", sentence, picture, facts))
    steps.append(detections_step(scene, detections, "R-CNN"))
    return steps


def pyramid_bins(box: Tensor, spatial_scale: float, level: int, map_size: tuple[int, int]):
    """The ``level x level`` bins SPP pools ``box`` into, in feature-map cells: RoI pooling's
    rule (the window's corners rounded on the map, bin ``i`` spanning ``floor(i * h / n)``
    to ``ceil((i + 1) * h / n)``, clipped to the map), as :func:`visionlab.ops.spp_rois`
    pools them.

    Args:
        box: ``Tensor[4]`` xyxy in pixels of the image the map was computed from.
        spatial_scale: map cells per pixel.
        map_size: ``(h, w)`` of the map.

    Returns:
        ``Tensor[level, level, 4]`` int64 ``(x1, y1, x2, y2)`` cells, ``x2`` / ``y2`` excluded
        (an empty bin has ``x2 <= x1`` or ``y2 <= y1``).
    """
    m = box.float() * torch.tensor(spatial_scale, dtype=torch.float32)
    x1, y1, x2, y2 = (int(math.copysign(math.floor(abs(v) + 0.5), v)) for v in m.tolist())
    bin_w, bin_h = max(x2 - x1 + 1, 1) / level, max(y2 - y1 + 1, 1) / level
    h, w = map_size
    out = torch.zeros(level, level, 4, dtype=torch.long)
    for i in range(level):
        for j in range(level):
            ya = min(max(math.floor(i * bin_h) + y1, 0), h)
            yb = min(max(math.ceil((i + 1) * bin_h) + y1, 0), h)
            xa = min(max(math.floor(j * bin_w) + x1, 0), w)
            xb = min(max(math.ceil((j + 1) * bin_w) + x1, 0), w)
            out[i, j] = torch.tensor([xa, ya, xb, yb])
    return out


def _draw_bins(ax, bins: Tensor, scale: float, color: str) -> None:
    """Bins (cells) as rectangles on ``ax``; ``scale`` pixels per cell (0.5 offsets: the
    imshow pixel centres of a map)."""
    from matplotlib.patches import Rectangle

    offset = -0.5 if scale == 1 else 0.0
    for x1, y1, x2, y2 in bins.reshape(-1, 4).tolist():
        if x2 > x1 and y2 > y1:
            corner = (x1 * scale + offset, y1 * scale + offset)
            size = ((x2 - x1) * scale, (y2 - y1) * scale)
            ax.add_patch(Rectangle(corner, *size, fill=False, edgecolor=color, linewidth=1.5))


@torch.no_grad()
def pyramid_step(model: RegionDetector, scene: Scene, box: Tensor, name: str) -> Step:
    """SPP's bins for ``box`` over the image (top row) and the feature map (bottom row)."""
    regions = model.regions
    scale = regions.scales[int(regions.scale_choice(box[None], min(scene.size))[0])]
    fmap, factors = regions.feature_map(model.backbone, [scene.image], scale)
    fmap, factor, stride = fmap[0].cpu(), factors[0], regions.feature_stride
    map_size = (fmap.shape[-2], fmap.shape[-1])
    levels = list(regions.levels)
    bins = [pyramid_bins(box * factor, 1.0 / stride, n, map_size) for n in levels]
    fig = figure(3.0 * len(levels), 6.2)
    axes = fig.subplots(2, len(levels), squeeze=False)
    activation = fmap.mean(dim=0).numpy()
    for col, (n, level_bins) in enumerate(zip(levels, bins)):
        top, bottom = axes[0][col], axes[1][col]
        top.imshow(image_array(scene.image))
        _draw_bins(top, level_bins, stride / factor, "yellow")
        top.set_title(f"{n} x {n} bins on the image")
        bottom.imshow(activation, cmap="viridis")
        _draw_bins(bottom, level_bins, 1, "white")
        bottom.set_title(f"{n} x {n} bins on the map")
        no_ticks(top, bottom)
    channels, total = fmap.shape[0], sum(n * n for n in levels)
    sentence = (
        f"SPPNet's pyramid for the best-scoring region ({name}): the convolutional layers ran "
        f"once on the image at scale {scale} px; the region is projected onto their stride-"
        f"{stride} map ({map_size[0]} x {map_size[1]} cells, mean activation shown) and "
        f"max-pooled in {' + '.join(f'{n} x {n}' for n in levels)} = {total} bins, a "
        f"{channels * total}-long vector whatever the region's size."
    )
    facts = {
        "scale": scale,
        "factor": factor,
        "stride": stride,
        "map_size": list(map_size),
        "box": box.tolist(),
        "levels": levels,
        "bins": [b.tolist() for b in bins],
    }
    return Step("pyramid_bins", "Spatial pyramid bins", sentence, figure_image(fig), facts)


def sppnet_steps(model: RegionDetector, scene: Scene) -> list[Step]:
    """SPPNet: proposals, scored regions, the pyramid of one region, detections."""
    proposed = model.propose(scene.image)
    boxes = proposed.cpu()
    best, labels, detections = _scored(model, scene, proposed)
    scored, top = scored_regions_step(model, scene, boxes, best, labels)
    steps = [proposals_step(scene, boxes, _search_how(model)), scored]
    if len(top):
        i = int(top[0])
        name = f"{class_name(int(labels[i]), scene.classes, 1)} {float(best[i]):.2f}"
        steps.append(pyramid_step(model, scene, boxes[i], name))
    steps.append(detections_step(scene, detections, "SPPNet"))
    return steps
