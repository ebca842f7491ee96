"""Untrained checkpoints for tests that need a model file but not a trained one (export,
prediction, the web app): built with a fixed seed and saved as the engine saves them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CLASSES = ["circle", "square", "triangle"]


def save_untrained(
    path: Path,
    name: str,
    task: str,
    args: dict[str, Any],
    *,
    image_size: int | None = 64,
    classes: list[str] = CLASSES,
    predicates: list[str] = (),
) -> Path:
    """Build ``name`` with ``args`` (seed 0) and save it at ``path`` (folders made) with the
    fields ``visionlab.load`` reads."""
    from visionlab.engine.checkpoint import save_checkpoint
    from visionlab.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(name, **args)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "model_name": name,
        "model_args": {k: v for k, v in model.build_args.items() if k != "name"},
        "task": task,
        "classes": list(classes),
        "predicates": list(predicates),
        "image_size": image_size,
    }
    save_checkpoint(path, state)
    return path
