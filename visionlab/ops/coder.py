"""BoxCoder: the R-CNN box-delta parameterisation shared by R-CNN, SPPNet, Fast/Faster/Mask R-CNN.

Girshick et al., "Rich feature hierarchies..." (CVPR 2014), appendix C: a target box ``g`` is
encoded relative to a reference box ``p`` (proposal or anchor) as

    dx = wx * (g_cx - p_cx) / p_w      dy = wy * (g_cy - p_cy) / p_h
    dw = ww * log(g_w / p_w)           dh = wh * log(g_h / p_h)

with widths ``x2 - x1`` (no +1). Decoding inverts this and clamps ``dw, dh`` so that ``exp``
cannot overflow. The arithmetic matches torchvision's ``BoxCoder`` bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BoxCoder"]


class BoxCoder:
    """Encode boxes as deltas relative to reference boxes, and decode deltas back to boxes.

    Args:
        weights: ``(wx, wy, ww, wh)`` multiplying the four deltas; (10, 10, 5, 5) is the Fast
            R-CNN head's choice, (1, 1, 1, 1) the RPN's.
        bbox_xform_clip: upper bound on decoded ``dw, dh`` (default ``log(1000 / 16)``).
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)
        self._weight_cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"

    def _weights(self, like: Tensor) -> Tensor:
        key = (like.dtype, like.device)
        w = self._weight_cache.get(key)
        if w is None:
            w = torch.tensor(self.weights, dtype=like.dtype, device=like.device)
            self._weight_cache[key] = w
        return w

    @staticmethod
    def _check(t: Tensor, name: str, multiple: bool) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 2 or t.shape[1] == 0 or t.shape[1] % 4 or (not multiple and t.shape[1] != 4):
            shape = "[N, 4 * K]" if multiple else "[N, 4]"
            raise ValueError(f"{name} must be Tensor{shape}, got shape {tuple(t.shape)}")

    def encode(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Deltas that turn ``proposals`` into ``reference_boxes``.

        Args:
            reference_boxes: ``Tensor[N, 4]`` (or ``[N, 4 * K]``, K boxes per row) xyxy, the
                targets (usually matched ground-truth boxes).
            proposals: ``Tensor[N, 4]`` xyxy, the reference boxes (anchors / proposals), with
                positive width and height.

        Returns:
            ``Tensor[N, 4 * K]`` deltas ``(dx, dy, dw, dh)`` per box, in ``proposals``' dtype.
        """
        self._check(reference_boxes, "reference_boxes", multiple=True)
        self._check(proposals, "proposals", multiple=False)
        if reference_boxes.shape[0] != proposals.shape[0]:
            raise ValueError(
                f"reference_boxes has {reference_boxes.shape[0]} rows but proposals "
                f"{proposals.shape[0]}"
            )
        n, k = proposals.shape[0], reference_boxes.shape[1] // 4
        wx, wy, ww, wh = self.weights
        # Column by column, torchvision's arithmetic operation for operation (bit-equal
        # results). Measured on CPU: layout changes (transposes, [N, 2] pairs) cost more than
        # they save in this memory-bound chain.
        gx1, gy1, gx2, gy2 = reference_boxes.to(proposals.dtype).view(n, k, 4).unbind(dim=2)
        px1, py1, px2, py2 = proposals[:, :, None].unbind(dim=1)  # each [N, 1]
        pw, ph = px2 - px1, py2 - py1
        pcx, pcy = px1 + 0.5 * pw, py1 + 0.5 * ph
        gw, gh = gx2 - gx1, gy2 - gy1  # each [N, K]
        gcx, gcy = gx1 + 0.5 * gw, gy1 + 0.5 * gh
        out = proposals.new_empty((n, k, 4))
        # filling columns of a preallocated tensor interleaves faster than cat / stack
        out[..., 0] = wx * (gcx - pcx) / pw
        out[..., 1] = wy * (gcy - pcy) / ph
        out[..., 2] = ww * torch.log(gw / pw)
        out[..., 3] = wh * torch.log(gh / ph)
        return out.view(n, 4 * k)

    def decode(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Apply deltas to reference boxes.

        Args:
            rel_codes: ``Tensor[N, 4 * K]`` deltas, e.g. one set per class.
            boxes: ``Tensor[N, 4]`` xyxy reference boxes (anchors / proposals).

        Returns:
            ``Tensor[N, 4 * K]`` decoded xyxy boxes (same layout as ``rel_codes``), in
            ``rel_codes``' dtype. Boxes are not clipped to the image.
        """
        self._check(rel_codes, "rel_codes", multiple=True)
        self._check(boxes, "boxes", multiple=False)
        if rel_codes.shape[0] != boxes.shape[0]:
            raise ValueError(f"rel_codes has {rel_codes.shape[0]} rows but boxes {boxes.shape[0]}")
        n, k = boxes.shape[0], rel_codes.shape[1] // 4
        wx, wy, ww, wh = self.weights
        # column by column, as in encode
        dx, dy, dw, dh = rel_codes.view(n, k, 4).unbind(dim=2)  # each [N, K]
        x1, y1, x2, y2 = boxes.to(rel_codes.dtype)[:, :, None].unbind(dim=1)  # each [N, 1]
        widths, heights = x2 - x1, y2 - y1
        ctr_x, ctr_y = x1 + 0.5 * widths, y1 + 0.5 * heights
        dx, dy = dx / wx, dy / wy
        dw = torch.clamp(dw / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(dh / wh, max=self.bbox_xform_clip)
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        half_w = 0.5 * (torch.exp(dw) * widths)
        half_h = 0.5 * (torch.exp(dh) * heights)
        out = rel_codes.new_empty((n, k, 4))
        out[..., 0] = pred_ctr_x - half_w
        out[..., 1] = pred_ctr_y - half_h
        out[..., 2] = pred_ctr_x + half_w
        out[..., 3] = pred_ctr_y + half_h
        return out.view(n, 4 * k)
