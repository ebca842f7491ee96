"""What ``api.train``, ``run`` (the Trainer's runs) and ``stages`` (R-CNN's staged runs)
share: the device, seeding, transforms, the model builder's arguments, what a checkpoint
records, the resume checks and ``eval.json``. A leaf of the engine: it imports neither of
them, so they import it and not each other (``api`` -> ``run`` -> ``stages``, lazily)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionlab.config import Config
from visionlab.engine.checkpoint import atomic_write
from visionlab.engine.logging import to_plain
from visionlab.errors import CheckpointError, ConfigError, describe_class_mismatch


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run lives and how it ended."""

    run_dir: Path
    step: int
    best_metric: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    interrupted: bool = False
    stop_signal: str | None = None
    checkpoints: dict[str, Path] = field(default_factory=dict)


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when present (this process's GPU under torchrun), else CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {spec!r} asked but CUDA is not available")
        if spec == "cuda":
            return torch.device("cuda", local_rank)
    return torch.device(spec)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; ``deterministic`` asks torch for deterministic kernels
    (warn-only: ops without one warn instead of failing) and disables cuDNN autotuning."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def make_transform(task: str, train: bool, size: int | None, augment: dict[str, Any]) -> Any:
    """``build_transforms`` for a recipe: ``augment`` applies to training only."""
    from visionlab.data.transforms import build_transforms

    try:
        return build_transforms(task, train, size, **(augment if train else {}))
    except ValueError as err:
        raise ConfigError(f"augment: {err}") from None


def model_kwargs(
    cfg: Config, task: Any, classes: Sequence[str], resume: bool, predicates: Sequence[str] = ()
) -> dict[str, Any]:
    """The builder's keyword arguments: recipe ``model_args`` + class (and predicate) count
    + transfer."""
    from visionlab.models.registry import model_info

    info = model_info(cfg.model)
    expected = "detection" if cfg.task == "instance" else cfg.task
    if info.task not in (cfg.task, expected):
        raise ConfigError(f"model {cfg.model!r} is a {info.task} model but task is {cfg.task!r}")
    kwargs = dict(cfg.model_args)
    if "num_classes" in info.args and "num_classes" not in kwargs:
        kwargs["num_classes"] = task.num_model_classes(classes)
    if "num_predicates" in info.args and "num_predicates" not in kwargs:
        kwargs["num_predicates"] = len(predicates)
    if cfg.transfer.pretrained and not resume:  # a resumed run has its weights already
        if "pretrained" not in info.args:
            raise ConfigError(
                f"transfer.pretrained: model {cfg.model!r} does not start from a whole "
                "checkpoint; its backbone's initial weights are "
                f"model_args.pretrained_backbone={cfg.transfer.pretrained}"
                if "pretrained_backbone" in info.args
                else f"transfer.pretrained: model {cfg.model!r} takes no weights file"
            )
        kwargs["pretrained"] = cfg.transfer.pretrained
    if cfg.transfer.freeze != "none" and "freeze" in info.args:
        kwargs["freeze"] = cfg.transfer.freeze
    return kwargs


def checkpoint_meta(
    model: nn.Module,
    kwargs: dict[str, Any],
    cfg: Config,
    classes: Sequence[str],
    predicates: Sequence[str],
) -> dict[str, Any]:
    """The plain-data fields every checkpoint carries to rebuild ``model``, built from
    ``kwargs``: its builder arguments never include a weights source."""
    args = dict(getattr(model, "build_args", None) or kwargs)
    args.pop("name", None)
    args.pop("pretrained", None)
    return {
        "model_name": cfg.model,
        "model_args": args,
        "task": cfg.task,
        "classes": list(classes),
        "predicates": list(predicates),
        "config": cfg.to_dict(),
        "image_size": cfg.image_size,
    }


def check_resumed(state: dict[str, Any], cfg: Config, classes: Sequence[str], path: Path) -> None:
    """Refuse, in one line, a resumed run on other classes than ``state``'s (a changed model
    is refused before, with the recipe: :func:`visionlab.engine.rundir.resume_changes`)."""
    stored = list(state.get("classes") or [])
    if stored and stored != list(classes):
        mismatch = describe_class_mismatch("the checkpoint", stored, "the dataset", list(classes))
        raise CheckpointError(f"{path}: cannot resume on other classes: {mismatch}")


def load_weights(module: nn.Module, weights: dict[str, Any], path: Path, name: str) -> None:
    """``module.load_state_dict(weights)`` with a one-line error naming the checkpoint."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: weights do not fit {name}: {first}") from None


def write_eval_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``eval.json`` (numbers, per-class dicts) atomically."""
    text = json.dumps(to_plain(payload), indent=2)
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
