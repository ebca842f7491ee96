"""Assign predictions (anchors, proposals) to ground truth by IoU, and sample a balanced
minibatch of positives and negatives from the assignment: the recipe of the R-CNN family.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BalancedSampler", "Matcher"]


class Matcher:
    """Match each prediction to the ground-truth box it overlaps most, with IoU thresholds.

    For a prediction whose best quality is ``q`` against gt ``j``:

    - ``q >= high_threshold``: matched to ``j``;
    - ``low_threshold <= q < high_threshold``: :attr:`BETWEEN_THRESHOLDS` (-2, usually ignored);
    - ``q < low_threshold``: :attr:`BELOW_LOW_THRESHOLD` (-1, background).

    With ``allow_low_quality_matches`` every gt box also keeps the prediction(s) it overlaps
    most, even below ``high_threshold`` (Faster R-CNN, Ren et al. 2015, section 3.1.2): those
    predictions get their own best gt (as in torchvision and Detectron). Unlike those, a gt
    box that overlaps no prediction at all (best quality 0) promotes nothing.

    Args:
        high_threshold: quality at or above which a prediction is foreground.
        low_threshold: quality below which a prediction is background (<= high_threshold).
        allow_low_quality_matches: keep each gt's best prediction(s), see above.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self,
        high_threshold: float,
        low_threshold: float,
        allow_low_quality_matches: bool = False,
    ) -> None:
        if low_threshold > high_threshold:
            raise ValueError(
                f"low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __repr__(self) -> str:
        return (
            f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """Match predictions to ground truth.

        Args:
            match_quality_matrix: ``Tensor[M, N]``, quality (usually IoU) of each of the M
                gt boxes against each of the N predictions. ``M == 0`` (an image without
                objects) makes every prediction background.

        Returns:
            ``Tensor[N] int64``: the matched gt index in ``[0, M)``, or
            :attr:`BELOW_LOW_THRESHOLD` / :attr:`BETWEEN_THRESHOLDS`.
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(
                "match_quality_matrix must be Tensor[M gt, N predictions], got shape "
                f"{tuple(match_quality_matrix.shape)}"
            )
        num_gt, num_pred = match_quality_matrix.shape
        if num_gt == 0:
            return torch.full(
                (num_pred,),
                self.BELOW_LOW_THRESHOLD,
                dtype=torch.int64,
                device=match_quality_matrix.device,
            )
        matched_vals, all_matches = match_quality_matrix.max(dim=0)  # [N], [N]
        # masked fills rather than boolean indexing: no nonzero(), no host sync on GPU
        matches = all_matches.masked_fill(
            matched_vals < self.high_threshold, self.BETWEEN_THRESHOLDS
        ).masked_fill_(matched_vals < self.low_threshold, self.BELOW_LOW_THRESHOLD)
        if self.allow_low_quality_matches and num_pred > 0:
            best_per_gt = match_quality_matrix.max(dim=1).values  # [M]
            # a gt that overlaps nothing (best 0) must not claim every zero-overlap prediction
            best_per_gt = best_per_gt.masked_fill(best_per_gt <= 0, float("inf"))
            is_best = (match_quality_matrix == best_per_gt[:, None]).any(dim=0)  # [N]
            matches = torch.where(is_best, all_matches, matches)
        return matches


class BalancedSampler:
    """Sample a fixed-size minibatch per image with a target fraction of positives.

    Fast R-CNN (Girshick 2015, section 2.3) samples 25% foreground RoIs; the RPN samples up to
    half positives. Where positives are short, negatives fill the batch.

    Args:
        batch_size_per_image: number of elements sampled per image (at most).
        positive_fraction: target fraction of positives in each image's sample.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image < 0:
            raise ValueError(f"batch_size_per_image must be >= 0, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __repr__(self) -> str:
        return (
            f"BalancedSampler(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )

    def _choose(self, mask: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        idx = torch.where(mask)[0]
        if k >= idx.numel():
            return idx
        perm_device = generator.device if generator is not None else idx.device
        perm = torch.randperm(idx.numel(), generator=generator, device=perm_device)[:k]
        return idx[perm.to(idx.device)]

    def __call__(
        self,
        matched_labels: list[Tensor] | Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[list[Tensor], list[Tensor]] | tuple[Tensor, Tensor]:
        """Choose positives and negatives.

        Args:
            matched_labels: per image a ``Tensor[N_i]`` int64 with ``>= 1`` for positives
                (class labels), ``0`` for negatives and ``< 0`` for ignored elements; or a
                single such tensor.
            generator: a ``torch.Generator`` that makes the draw reproducible.

        Returns:
            ``(pos_masks, neg_masks)``: per image ``Tensor[N_i] bool`` masks (a single pair
            of masks when a single tensor was given). Positives and negatives are disjoint;
            together at most ``batch_size_per_image``.
        """
        single = isinstance(matched_labels, Tensor)
        labels_per_image = [matched_labels] if single else list(matched_labels)
        pos_masks, neg_masks = [], []
        for labels in labels_per_image:
            if labels.dim() != 1:
                raise ValueError(f"matched labels must be Tensor[N], got {tuple(labels.shape)}")
            num_pos_wanted = int(self.batch_size_per_image * self.positive_fraction)
            pos = self._choose(labels >= 1, num_pos_wanted, generator)
            neg = self._choose(labels == 0, self.batch_size_per_image - pos.numel(), generator)
            pos_mask = torch.zeros_like(labels, dtype=torch.bool)
            neg_mask = torch.zeros_like(labels, dtype=torch.bool)
            pos_mask[pos] = True
            neg_mask[neg] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        if single:
            return pos_masks[0], neg_masks[0]
        return pos_masks, neg_masks
