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
        # Coordinate-major views ([4, K, N], [4, 1, N]) keep N as the innermost loop of every
        # elementwise op; the arithmetic is torchvision's, operation for operation.
        ref = reference_boxes.to(proposals.dtype).view(n, k, 4).permute(2, 1, 0).contiguous()
        prop = proposals.t().contiguous()[:, None, :]
        w = self._weights(proposals)[:, None, None]  # [4, 1, 1]
        p_size = prop[2:] - prop[:2]  # [2, 1, N]
        p_ctr = prop[:2] + 0.5 * p_size
        g_size = ref[2:] - ref[:2]  # [2, K, N]
        g_ctr = ref[:2] + 0.5 * g_size
        out = proposals.new_empty((n, k, 4))
        out_t = out.permute(2, 1, 0)
        out_t[:2] = w[:2] * (g_ctr - p_ctr) / p_size
        out_t[2:] = w[2:] * torch.log(g_size / p_size)
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
        codes = rel_codes.view(n, k, 4).permute(2, 1, 0)  # [4, K, N], see encode
        ref = boxes.to(rel_codes.dtype).t().contiguous()[:, None, :]  # [4, 1, N]
        d = codes / self._weights(rel_codes)[:, None, None]
        size = ref[2:] - ref[:2]  # [2, 1, N]
        ctr = ref[:2] + 0.5 * size
        pred_ctr = d[:2] * size + ctr  # [2, K, N]
        half = 0.5 * (torch.exp(d[2:].clamp(max=self.bbox_xform_clip)) * size)
        out = rel_codes.new_empty((n, k, 4))
        out_t = out.permute(2, 1, 0)
        out_t[:2] = pred_ctr - half
        out_t[2:] = pred_ctr + half
        return out.view(n, 4 * k)
