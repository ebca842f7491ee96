"""The decision stages of R-CNN and SPPNet, in torch: one linear SVM per class trained with
hard negative mining, and class-specific bounding-box ridge regression.

R-CNN (Girshick et al., CVPR 2014), section 2.3: a linear SVM per class on fc7, positives
the class's ground-truth boxes, negatives the proposals with IoU < 0.3 against every
instance, trained with hard negative mining (Felzenszwalb et al. 2010); appendix C: ridge
regression from pool5 features to :class:`visionlab.ops.BoxCoder` deltas. The released
code used liblinear; :func:`fit_linear_svm` solves the same maximum-margin problem with the
squared hinge and L-BFGS, :func:`mine_hard_negatives` is the cache loop around it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SVMSettings",
    "fit_linear_svm",
    "fit_ridge",
    "mine_hard_negatives",
]


@dataclass
class SVMSettings:
    """Linear SVM training of R-CNN's section 2.3 (defaults of the released code).

    Attributes:
        neg_iou: proposals with IoU below this against every instance of the class are
            negatives of that class (0.3, chosen by a grid search in the paper).
        C: weight of the summed (squared) hinge loss against ``0.5 * ||w||^2`` (R-CNN's
            released code: 0.001 on features of mean norm 20).
        pos_weight: loss weight of positives (liblinear ``-w1 2``).
        feat_norm: features are scaled so that their mean L2 norm is this (20).
        hard_threshold: a negative scoring above this is hard and joins the cache (-1).
        evict_threshold: a cached negative scoring below this leaves the cache (-1.2).
        chunks: negatives are scanned in this many chunks ("images" of the paper's loop);
            the SVM is retrained after each chunk that added hard negatives.
        rounds: passes over all negatives (R-CNN makes one).
        iters: L-BFGS iterations per retraining.
    """

    neg_iou: float = 0.3
    C: float = 1e-3
    pos_weight: float = 2.0
    feat_norm: float = 20.0
    hard_threshold: float = -1.0
    evict_threshold: float = -1.2
    chunks: int = 8
    rounds: int = 1
    iters: int = 50


def fit_linear_svm(
    features: Tensor,
    labels: Tensor,
    *,
    C: float,
    pos_weight: float = 1.0,
    iters: int = 50,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Minimise ``0.5 * ||w||^2 + C * sum_i c_i * max(0, 1 - y_i (w . x_i + b))^2``.

    The L2-loss (squared hinge) linear SVM, liblinear's default: smooth, so full-batch L-BFGS
    solves it; the bias is not regularised. The loss is a sum, so negatives beyond the
    margin change nothing, which lets hard negative mining reach the all-negatives solution.

    Args:
        features: ``Tensor[N, D]``.
        labels: ``Tensor[N]`` with ``+1`` for positives and ``-1`` for negatives.
        C: weight of the loss against the regulariser (liblinear's ``-c``).
        pos_weight: ``c_i`` of positives (negatives have 1).
        iters: L-BFGS iterations.
        init: ``(w [D], b [])`` to start from (warm start between mining rounds).

    Returns:
        ``(w: Tensor[D], b: Tensor[])``.
    """
    x = features.float()
    y = labels.float()
    dim = x.shape[1]
    params = torch.zeros(dim + 1, dtype=torch.float32, device=x.device)
    if init is not None:
        params[:dim], params[dim] = init[0].float(), init[1].float()
    params.requires_grad_(True)
    cost = torch.where(y > 0, torch.full_like(y, float(pos_weight)), torch.ones_like(y))
    optimizer = torch.optim.LBFGS(
        [params], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        w, b = params[:dim], params[dim]
        slack = (1 - y * (x @ w + b)).clamp(min=0)
        loss = C * (cost * slack.square()).sum() + 0.5 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    params = params.detach()
    return params[:dim].clone(), params[dim].clone()


def mine_hard_negatives(
    positives: Tensor,
    negative_chunks: Sequence[Tensor] | Callable[[], Sequence[Tensor]],
    settings: SVMSettings,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Train one class's SVM with hard negative mining (R-CNN sec. 2.3, Felzenszwalb 2010).

    Each chunk of negatives is scored by the current SVM; those above ``hard_threshold``
    join the cache, the SVM is retrained (warm start) on positives + cache, and cached
    negatives below ``evict_threshold`` are evicted.

    Args:
        positives: ``Tensor[P, D]`` features of the class's positives.
        negative_chunks: chunks ``Tensor[N_j, D]`` of the negatives (or a callable giving
            them, called once per round).
        settings: :class:`SVMSettings` (thresholds, optimiser, rounds).

    Returns:
        ``(w [D], b [], stats)`` with ``stats = {"cache": final cache size, "seen": negatives
        scanned per round, "hard_added": total negatives added}``.
    """
    dim = positives.shape[1]
    w = torch.zeros(dim, dtype=torch.float32, device=positives.device)
    b = torch.zeros((), dtype=torch.float32, device=positives.device)
    cache = positives.new_zeros((0, dim))
    added = 0
    seen = 0
    for _ in range(max(1, settings.rounds)):
        chunks = negative_chunks() if callable(negative_chunks) else negative_chunks
        seen = 0
        for chunk in chunks:
            if chunk.numel() == 0:
                continue
            seen += chunk.shape[0]
            scores = chunk.float() @ w + b
            hard = chunk[scores > settings.hard_threshold]
            if hard.shape[0] == 0:
                continue
            added += hard.shape[0]
            cache = torch.cat([cache, hard.to(cache.dtype)])
            x = torch.cat([positives.float(), cache.float()])
            y = torch.cat(
                [positives.new_ones(positives.shape[0]), -cache.new_ones(cache.shape[0])]
            ).float()
            w, b = fit_linear_svm(
                x,
                y,
                C=settings.C,
                pos_weight=settings.pos_weight,
                iters=settings.iters,
                init=(w, b),
            )
            cache = cache[(cache.float() @ w + b) >= settings.evict_threshold]
    return w, b, {"cache": float(cache.shape[0]), "seen": float(seen), "hard_added": float(added)}


def fit_ridge(features: Tensor, targets: Tensor, *, ridge: float) -> Tensor:
    """Closed-form ridge regression with an unregularised bias (R-CNN appendix C).

    Solves ``min_W ||[X 1] W - Y||^2 + ridge * ||W[:-1]||^2``.

    Args:
        features: ``Tensor[N, D]``.
        targets: ``Tensor[N, T]``.
        ridge: the regularisation ``lambda`` (1000 in R-CNN).

    Returns:
        ``Tensor[D + 1, T]``: weights, the bias in the last row.
    """
    x = torch.cat([features.double(), features.new_ones(features.shape[0], 1).double()], dim=1)
    reg = torch.eye(x.shape[1], dtype=x.dtype, device=x.device) * float(ridge)
    reg[-1, -1] = 0.0
    gram = x.T @ x + reg
    gram[-1, -1] += 1e-6  # an empty set of samples still gives a (zero) solution
    return torch.linalg.solve(gram, x.T @ targets.double()).float()
