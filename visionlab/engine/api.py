"""The public Python API behind ``visionlab.train / evaluate / predict / load``.

``train`` turns a recipe into a run directory (``runs/<name>/``), under ``torchrun`` with
DistributedDataParallel. ``load`` rebuilds a model from a checkpoint or an exported folder;
``evaluate`` and ``predict`` take either a path or a model returned by ``load``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from visionlab.config import Config, apply_overrides, from_dict, load_config
from visionlab.constants import STACKED_TASKS
from visionlab.engine import distributed
from visionlab.engine.checkpoint import load_checkpoint, read_export, require_keys
from visionlab.engine.common import TrainResult, load_weights, make_transform, resolve_device
from visionlab.engine.rundir import CHECKPOINT_DIR
from visionlab.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    VisionLabError,
    describe_class_mismatch,
)
from visionlab.tasks import get_task, to_device

if TYPE_CHECKING:
    from visionlab.engine.streaming import Frame


def _resolve_config(
    config: str | Path | Config | dict | None,
    overrides: Sequence[str],
    stored: dict[str, Any] | None = None,
) -> Config:
    """A fresh, validated Config from any of the forms :func:`train` accepts; ``stored``
    (a resumed checkpoint's recipe) stands in for a missing ``config``."""
    if config is None and stored is not None:
        config = stored
    if isinstance(config, Config | dict):
        data = config.to_dict() if isinstance(config, Config) else config
        return apply_overrides(from_dict(data), list(overrides))
    return load_config(config, list(overrides))


def _resume_state(resume: str | Path) -> dict[str, Any]:
    """``RUN/checkpoints/last.pt`` of a run to resume, loaded (weights_only)."""
    last = Path(resume) / CHECKPOINT_DIR / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"{resume}: nothing to resume (no {CHECKPOINT_DIR}/last.pt)")
    state = load_checkpoint(last)
    require_keys(state, last, ("model", "model_name", "config"))
    from visionlab.models.postprocess import upgrade_model_args

    config = state["config"]  # a run of an older version spells some settings the old way
    config["model_args"] = upgrade_model_args(state["model_name"], config.get("model_args") or {})
    return state


# ------------------------------------------------------------------------------ train


def train(
    config: str | Path | Config | dict | None = None,
    overrides: Sequence[str] = (),
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    hooks: Sequence[Any] = (),
) -> TrainResult:
    """Train from a recipe and return where the run lives.

    A fresh run never replaces an earlier one (:mod:`visionlab.engine.rundir`). Ctrl-C or
    SIGTERM stop after the step in progress with ``last.pt`` saved
    (``TrainResult.stop_signal`` names the signal).

    Args:
        config: a YAML recipe path, a :class:`Config`, a dict of recipe keys, or None (all
            defaults; with ``resume``, the recipe stored in the run's ``last.pt``).
        overrides: ``key=value`` strings (``train.epochs=3``).
        resume: a run directory to continue exactly from its ``checkpoints/last.pt``; a
            change of what is trained is refused, other changes are applied with a warning
            and recorded in ``RUN/resumes.jsonl``.
        overwrite: replace the run in ``out=`` (its files are kept aside until this run has
            saved its first checkpoint).
        hooks: extra :class:`visionlab.engine.hooks.HookBase` objects.
    """
    from visionlab.engine.rundir import open_run_folder, resume_changes

    state, changes = None, {}
    if resume is not None:
        if overwrite:
            raise ConfigError("--overwrite starts a new run; it cannot go with --resume")
        state = _resume_state(resume)
    cfg = _resolve_config(config, overrides, state["config"] if state else None)
    if state is not None:
        cfg.out = str(resume)
        changes = resume_changes(from_dict(state["config"]).to_dict(), cfg.to_dict())
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = distributed.init_distributed(cfg.device)
    try:
        from visionlab.engine.run import run_training

        say = print if info.is_main else (lambda *_: None)
        folder = open_run_folder(
            cfg, resume=state is not None, overwrite=overwrite, is_main=info.is_main, say=say
        )
        try:
            if state is not None and info.is_main:
                if changes:
                    listed = ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in changes.items())
                    say(f"warning: resumed with changed settings: {listed}")
                folder.record_resume(int(state.get("step", 0)), changes)
            result = run_training(cfg, info, folder=folder, resume_state=state, extra_hooks=hooks)
        except BaseException:
            folder.close(ok=False)
            raise
        folder.close(ok=True)
        return result
    finally:
        if owns_group:
            distributed.cleanup()


# ------------------------------------------------------------------------ load / eval


def load(path: str | Path, device: str | torch.device = "cpu", *, fuse: bool = False) -> nn.Module:
    """Rebuild a trained model from a ``.pt`` checkpoint or an exported folder, or load an
    exported ``.onnx`` / ``.pt2`` model (:mod:`visionlab.export.runtime`; it runs on the CPU
    and cannot be fused, trained or saved).

    Args:
        fuse: fold batch norms into the convolutions before them
            (:func:`visionlab.ops.fuse.fuse_conv_bn`): the same predictions, faster, for
            inference only (the model can then not be trained or saved).

    Returns:
        The model in eval mode on ``device`` with ``.task``, ``.classes``, ``.predicates``,
        ``.image_size`` and ``.meta`` (the checkpoint's plain-data fields) set.
    """
    from visionlab.export.runtime import find_export, load_exported
    from visionlab.models.postprocess import upgrade_model_args
    from visionlab.models.registry import build_model

    path = Path(path)
    exported = find_export(path)
    if exported is not None:  # an ONNX / torch.export graph: predicts on the CPU as it is
        return load_exported(exported)
    if path.is_dir() or path.suffix == ".safetensors":
        meta, state = read_export(path)
    else:
        meta = load_checkpoint(path)
        require_keys(meta, path, ("model", "model_name", "task"))
        state = meta.pop("model")
    for key in ("optimizer", "scheduler", "scaler", "rng", "sampler"):
        meta.pop(key, None)
    args = dict(meta.get("model_args") or {})
    args.pop("pretrained", None)
    # checkpoints of older versions spell some settings the old way
    meta["model_args"] = args = upgrade_model_args(meta["model_name"], args)
    try:
        model = build_model(meta["model_name"], **args)
    except VisionLabError as err:
        raise CheckpointError(f"{path}: cannot rebuild the model: {err}") from None
    load_weights(model, state, path, meta["model_name"])
    model.task = meta.get("task", getattr(model, "task", ""))
    model.classes = list(meta.get("classes") or [])
    model.predicates = list(meta.get("predicates") or [])
    size = meta.get("image_size", meta.get("input_size"))
    model.image_size = size[-1] if isinstance(size, list | tuple) else size
    model.meta = meta
    model = model.to(device).eval()
    if fuse:
        from visionlab.ops.fuse import fuse_conv_bn

        fuse_conv_bn(model)
    return model


def _as_model(
    model_or_path: nn.Module | str | Path, device: torch.device, *, fuse: bool = False
) -> nn.Module:
    """A model given stays as it is (moved and in eval mode); a path is loaded (``fuse``d)."""
    if isinstance(model_or_path, nn.Module):
        if not hasattr(model_or_path, "classes"):
            raise VisionLabError("pass a path or a model returned by visionlab.load")
        return model_or_path.to(device).eval()
    return load(model_or_path, device, fuse=fuse)


def evaluate(
    model_or_path: nn.Module | str | Path,
    data: str | Path | None = None,
    split: str = "val",
    *,
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    limit: int | None = None,
    wrap_evaluator: Callable[[Any, Any], Any] | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on a dataset split with the task's evaluator.

    Args:
        data: a dataset path (any format) or "scenes"; default: the recipe's dataset.
        limit: score only the split's first ``limit`` images (a quick look; the figures
            of record use the whole split).
        wrap_evaluator: ``(evaluator, dataset) -> evaluator``: the evaluator to run instead
            of the task's, e.g. a wrapper that also keeps the predictions
            (:class:`visionlab.eval.analysis.AnalysisCollector`); ``dataset`` is the split as
            the model sees it, in the order evaluated.

    Returns:
        The task evaluator's metrics (``top1``, ``mIoU``, ``AP``, ``mask_AP``, ...).
    """
    from visionlab.data.datasets import load_dataset
    from visionlab.engine.trainer import eval_loader
    from visionlab.engine.trainer import evaluate as run_eval

    dev = resolve_device(device)
    model = _as_model(model_or_path, dev)
    task = get_task(model.task)
    if data is None:
        data = (model.meta.get("config") or {}).get("data")
        if not data:
            raise ConfigError("no dataset given and the checkpoint names none (--data)")
    dataset = load_dataset(
        data,
        split,
        task=model.task,
        transforms=make_transform(model.task, False, model.image_size, {}),
    )
    if model.classes and list(dataset.classes) != model.classes:
        raise DataError(
            data,
            describe_class_mismatch(
                "the dataset", list(dataset.classes), "the checkpoint", model.classes
            ),
        )
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of images, got {limit}")
    evaluator = task.evaluator(dataset.classes, getattr(dataset, "predicates", []))
    if wrap_evaluator is not None:
        evaluator = wrap_evaluator(evaluator, dataset)
    loader = eval_loader(dataset, batch_size=batch_size, num_workers=num_workers, limit=limit or 0)
    return run_eval(model, task, loader, evaluator, device=dev, progress=progress)


# ---------------------------------------------------------------------------- predict


def _restore_size(pred: dict[str, Tensor], size: tuple[int, int], orig: tuple[int, int]):
    """Map a prediction made at ``size`` (H, W) back onto the original image ``orig``."""
    if size == orig:
        return pred
    (h, w), (oh, ow) = size, orig
    out = dict(pred)
    for key in ("boxes", "proposals"):  # proposals: --show-proposals of the R-CNN family
        if key in out:
            scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=out[key].device)
            out[key] = out[key] * scale
    for key in ("semantic", "masks"):
        if key in out and out[key].ndim >= 2:
            value = out[key]
            flat = value.reshape(-1, 1, *value.shape[-2:]).float()
            resized = torch.nn.functional.interpolate(flat, size=orig, mode="nearest")
            out[key] = resized.reshape(*value.shape[:-2], oh, ow).to(value.dtype)
    if "scores" in out and out["scores"].ndim == 2:  # per-pixel scores of segmentation
        sc = out["scores"][None, None]
        out["scores"] = torch.nn.functional.interpolate(sc, size=orig, mode="bilinear")[0, 0]
    return out


@torch.no_grad()
def predict(
    model_or_path: nn.Module | str | Path,
    images: Sequence[str | Path | Tensor],
    *,
    topk: int = 5,
    score_threshold: float = 0.0,
    batch_size: int = 16,
    device: str = "auto",
    extras: Collection[str] = (),
    graph_constraint: bool = True,
) -> list[dict[str, Tensor]]:
    """Predict images (files or ``Tensor[3, H, W]`` in [0, 1]) with a trained model.

    A checkpoint path is loaded with its batch norms folded into the convolutions (the same
    predictions, faster); a model passed in is used as it is.

    Args:
        extras: what a detector adds to its predictions
            (:data:`visionlab.models.detector.EXTRA_KEYS`): ``("proposals",)`` (the R-CNN
            family: ``proposals [P, 4]``, in the original image's pixels too) or
            ``("grid",)`` (YOLO: ``grid_size``, per-detection ``cells``). One the model does
            not make is refused (``VisionLabError``) before any image is read.
        graph_constraint: relation models: one predicate per pair (``False``: every
            (pair, predicate) ranked, Lu et al.'s "no graph constraint").

    Returns:
        One dict per image, in the original image's pixels: classification ``labels [k]``
        (0-based) and ``scores [k]``; segmentation ``semantic [H, W]`` (0 = background);
        detection ``boxes [N, 4]`` (x1, y1, x2, y2), ``labels [N]`` (1..C), ``scores [N]``
        (and ``masks [N, H, W]`` for instance models), plus the keys of ``extras``.
    """
    from visionlab.data.imageio import load_image

    dev = resolve_device(device)
    model = _as_model(model_or_path, dev, fuse=True)  # a loaded model is ours to fuse
    options = _predict_options(
        model,
        topk=topk,
        score_threshold=score_threshold,
        extras=extras,
        graph_constraint=graph_constraint,
    )
    transform = make_transform(model.task, False, model.image_size, {})
    results: list[dict[str, Tensor]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        originals = [im if isinstance(im, Tensor) else load_image(im) for im in chunk]
        prepared = [transform(im, {})[0] for im in originals]
        results += _predict_prepared(model, originals, prepared, dev, options)
    return results


def _predict_options(
    model: nn.Module,
    *,
    topk: int = 5,
    score_threshold: float = 0.0,
    extras: Collection[str] = (),
    graph_constraint: bool = True,
) -> dict[str, Any]:
    """The task's predict options (see :func:`predict`); an extra the model does not make is
    refused here, before any image is read."""
    from visionlab.models.detector import check_extras

    return {
        "topk": topk,
        "score_threshold": score_threshold,
        "extras": tuple(sorted(check_extras(model, extras))),
        "graph_constraint": graph_constraint,
    }


def _predict_prepared(
    model: nn.Module,
    originals: Sequence[Tensor],
    prepared: Sequence[Tensor],
    device: torch.device,
    options: dict[str, Any],
) -> list[dict[str, Tensor]]:
    """One batch: ``prepared`` (the eval transform of each of ``originals``) predicted, and
    each prediction mapped back onto its original image, on the CPU."""
    batch = torch.stack(list(prepared)) if model.task in STACKED_TASKS else list(prepared)
    preds = get_task(model.task).predict(model, to_device(batch, device), **options)
    results = []
    for pred, orig, prep in zip(preds, originals, prepared):
        pred = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in pred.items()}
        results.append(_restore_size(pred, tuple(prep.shape[-2:]), tuple(orig.shape[-2:])))
    return results


@torch.no_grad()
def predict_stream(
    model_or_path: nn.Module | str | Path,
    files: Sequence[str | Path],
    *,
    batch_size: int = 16,
    device: str = "auto",
    workers: int = 0,
    every: int = 1,
    **options: Any,
) -> Iterator[tuple[Frame, dict[str, Tensor] | None]]:
    """Predict image and video files as they are read: a DataLoader decodes and transforms
    them in ``workers`` processes, ``batch_size`` at a time, while the model predicts.

    The same predictions as :func:`predict` for the same images and batches. Video files
    (:data:`visionlab.engine.streaming.VIDEO_EXTENSIONS`) give every ``every``-th frame.

    Args:
        options: :func:`predict`'s ``topk``, ``score_threshold``, ``extras``,
            ``graph_constraint``.

    Yields:
        ``(frame, prediction)`` in the order of ``files`` (a video's frames in order); the
        prediction is None for a file that could not be decoded (``frame.error`` says why).
    """
    from visionlab.engine.streaming import stream_batches

    dev = resolve_device(device)
    model = _as_model(model_or_path, dev, fuse=True)
    settings = _predict_options(model, **options)
    transform = make_transform(model.task, False, model.image_size, {})
    paths = [Path(f) for f in files]
    for frames in stream_batches(
        paths, transform, batch_size=batch_size, workers=workers, every=every
    ):
        good = [f for f in frames if f.error is None]
        preds = iter(
            _predict_prepared(
                model, [f.image for f in good], [f.prepared for f in good], dev, settings
            )
            if good
            else []
        )
        for frame in frames:
            yield frame, (next(preds) if frame.error is None else None)
