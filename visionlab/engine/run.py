"""Assemble one training run from a resolved recipe: data, model, optimizer, hooks, resume.

Called by :func:`visionlab.engine.api.train` (after the process group is joined). Only the
main process writes the run directory; every process builds the same model and data
(sliced by rank) and steps together.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionlab.config import Config, save_config
from visionlab.engine import distributed
from visionlab.engine.checkpoint import save_checkpoint
from visionlab.engine.common import (
    TrainResult,
    check_resumed,
    checkpoint_meta,
    load_weights,
    make_transform,
    model_kwargs,
    resolve_device,
    seed_everything,
    write_eval_json,
)
from visionlab.engine.distributed import DistInfo
from visionlab.engine.hooks import CheckpointHook, EvalHook, LoggingHook, UnfreezeHook
from visionlab.engine.interrupt import StopRequest
from visionlab.engine.logging import MetricsLogger
from visionlab.engine.rundir import CHECKPOINT_DIR, RunFolder
from visionlab.engine.trainer import Trainer, eval_loader, evaluate
from visionlab.errors import ConfigError, DataError, describe_class_mismatch
from visionlab.tasks import get_task


def _augment_kwargs(augment: dict[str, Any]) -> dict[str, Any]:
    """Check the recipe's ``augment`` keys against ``build_transforms``' keywords."""
    import difflib

    from visionlab.data.transforms import build_transforms

    params = inspect.signature(build_transforms).parameters
    known = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    out = {}
    for key, value in augment.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean 'augment.{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key 'augment.{key}'{hint}; known: {', '.join(known)}")
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def _datasets(cfg: Config) -> tuple[Any, Any]:
    from visionlab.data.datasets import load_dataset

    augment = _augment_kwargs(cfg.augment)
    train_ds = load_dataset(cfg.data, cfg.train_split, task=cfg.task)
    if train_ds.predicates and "predicate_flip" not in augment:
        # a mirrored image swaps "left of" and "right of": keep relationships true
        from visionlab.data.transforms import flip_predicate_pairs

        augment["predicate_flip"] = flip_predicate_pairs(train_ds.predicates)
    train_ds.transforms = make_transform(cfg.task, True, cfg.image_size, augment)
    val_ds = None
    if cfg.val_split:
        val_tf = make_transform(cfg.task, False, cfg.image_size, {})
        val_ds = load_dataset(cfg.data, cfg.val_split, task=cfg.task, transforms=val_tf)
        if list(val_ds.classes) != list(train_ds.classes):
            mismatch = describe_class_mismatch(
                f"split {cfg.train_split!r}",
                list(train_ds.classes),
                f"split {cfg.val_split!r}",
                list(val_ds.classes),
            )
            raise DataError(cfg.data, f"the splits' classes differ: {mismatch}")
    if len(train_ds) == 0:
        raise DataError(cfg.data, f"split {cfg.train_split!r} has no images")
    if cfg.cache == "ram":
        for ds in (train_ds, val_ds):
            if ds is not None:
                ds.cache_images()
    return train_ds, val_ds


def run_training(
    cfg: Config,
    info: DistInfo,
    *,
    folder: RunFolder,
    resume_state: dict[str, Any] | None = None,
    extra_hooks: Any = (),
) -> TrainResult:
    """Train ``cfg`` in this process (one of ``info.world_size``) into the locked ``folder``;
    ``resume_state`` is the loaded ``last.pt`` of a resumed run. See ``api.train``."""
    started = time.perf_counter()
    from visionlab.engine.stages import run_stages
    from visionlab.models.detector import Detector
    from visionlab.models.registry import build_model

    resume = resume_state is not None
    device = resolve_device(cfg.device, info.local_rank)
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp: fp16 needs CUDA; use bf16 on CPU")
    if cfg.train.batch_size % info.world_size:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} is not divisible by the "
            f"{info.world_size} processes"
        )
    run_dir = folder.path
    ckpt_dir = run_dir / CHECKPOINT_DIR
    last_path = ckpt_dir / "last.pt"
    say = print if info.is_main else (lambda *_: None)
    say(f"run: {run_dir}")

    task = get_task(cfg.task, label_smoothing=cfg.train.label_smoothing)
    train_ds, val_ds = _datasets(cfg)
    classes, predicates = list(train_ds.classes), list(getattr(train_ds, "predicates", []))
    if resume:
        check_resumed(resume_state, cfg, classes, last_path)
    kwargs = model_kwargs(cfg, task, classes, resume, predicates)
    # Seed right before the model exists: what ran before (rendering the built-in dataset on
    # first use, say) must not change the initial weights.
    seed_everything(cfg.seed, cfg.deterministic)
    module = build_model(cfg.model, **kwargs).to(device)
    meta = checkpoint_meta(module, kwargs, cfg, classes, predicates)
    if isinstance(module, Detector) and module.stages:  # R-CNN, SPPNet: trained in stages
        return run_stages(cfg, info, module, train_ds, val_ds, meta, device, folder, resume_state)
    if isinstance(module, Detector) and info.is_main:  # e.g. Fast R-CNN's region cache
        eval_tf = make_transform(cfg.task, False, cfg.image_size, {})
        module.prepare_data([train_ds, val_ds], transform=eval_tf)
    distributed.barrier()
    if cfg.transfer.freeze == "backbone" and "freeze" not in kwargs:
        if not hasattr(module, "freeze_backbone"):
            raise ConfigError(f"transfer.freeze: model {cfg.model!r} has no backbone to freeze")
        module.freeze_backbone()
    model: nn.Module = _wrap_ddp(module, device) if info.enabled else module

    stop = StopRequest(say=say)
    trainer = Trainer.from_recipe(
        cfg, model, task, train_ds, device=device, stop=stop, world_size=info.world_size
    )
    if resume:
        load_weights(module, resume_state["model"], last_path, cfg.model)
        trainer.load_state_dict(resume_state)
        say(f"resuming from {last_path} at step {trainer.step} (epoch {trainer.epoch})")

    def save(name: str) -> None:
        state = {"model": module.state_dict(), **meta, **trainer.state_dict()}
        save_checkpoint(ckpt_dir / f"{name}.pt", state)
        folder.checkpoint_saved()

    logger = None
    if info.is_main:
        if not resume:  # config.yaml keeps the recipe the run started with
            save_config(cfg, run_dir / "config.yaml")
        logger = MetricsLogger(run_dir, resume_step=trainer.step if resume else None)
    hooks, eval_hook = _hooks(cfg, trainer, val_ds, classes, predicates, save, logger)
    for hook in (*hooks, *extra_hooks):
        trainer.register_hook(hook)
    try:
        with stop:
            trainer.train()
    finally:
        if logger is not None:
            logger.close()

    result = TrainResult(
        run_dir=run_dir,
        step=trainer.step,
        best_metric=trainer.best_metric,
        metrics=eval_hook.last_metrics if eval_hook is not None else None,
        interrupted=trainer.interrupted,
        stop_signal=trainer.stop_signal,
        checkpoints={p.stem: p for p in sorted(ckpt_dir.glob("*.pt"))},
    )
    if info.is_main:
        primary = eval_hook.primary if eval_hook else None
        _finish(cfg, result, say, primary, seconds=time.perf_counter() - started, resumed=resume)
    distributed.barrier()
    return result


def _hooks(
    cfg: Config,
    trainer: Trainer,
    val_ds: Any,
    classes: list[str],
    predicates: list[str],
    save: Any,
    logger: MetricsLogger | None,
) -> tuple[list[Any], EvalHook | None]:
    """The run's hooks, in order: unfreeze, logging, evaluation, checkpoints."""
    module, task, device = trainer.module, trainer.task, trainer.device
    log_hook = LoggingHook(logger, log_every=cfg.train.log_every, progress=cfg.train.progress)
    hooks: list[Any] = []
    if cfg.transfer.unfreeze_after is not None:

        def unfreeze() -> None:
            module.unfreeze_backbone()  # declared by every model of the registry
            if trainer.model is not module:  # DDP registers trainable parameters when built
                trainer.model = _wrap_ddp(module, device)
            log_hook.write(f"epoch {trainer.epoch}: backbone unfrozen")

        hooks.append(UnfreezeHook(unfreeze, after_epochs=cfg.transfer.unfreeze_after))
    hooks.append(log_hook)
    eval_hook = None
    if val_ds is not None:
        val_loader = eval_loader(
            val_ds, batch_size=cfg.train.batch_size, seed=cfg.seed, num_workers=cfg.num_workers
        )

        def run_eval() -> dict[str, Any]:
            evaluator = task.evaluator(classes, predicates)
            return evaluate(module, task, val_loader, evaluator, device=device, amp=cfg.train.amp)

        eval_hook = EvalHook(
            run_eval,
            every=cfg.train.eval_every,
            primary=task.evaluator(classes, predicates).primary,
            on_best=lambda: save("best"),
            logger=logger,
            say=log_hook.write,
        )
        hooks.append(eval_hook)
    hooks.append(CheckpointHook(save, save_every=cfg.train.save_every))
    return hooks, eval_hook


def _finish(
    cfg: Config,
    result: TrainResult,
    say: Any,
    primary: str | None,
    *,
    seconds: float,
    resumed: bool,
) -> None:
    """eval.json, curves.png and the closing line. ``seconds``: wall time of this training
    call (data, model, steps and evaluations; a resumed run counts only its own part)."""
    run_dir = result.run_dir
    if result.metrics is not None and not result.interrupted:
        write_eval_json(
            run_dir / "eval.json",
            {
                "checkpoint": str(run_dir / CHECKPOINT_DIR / "last.pt"),
                "data": cfg.data,
                "split": cfg.val_split,
                "step": result.step,
                "metrics": result.metrics,
                "best": result.best_metric,
                "train_seconds": round(seconds, 1),
                "resumed": resumed,
            },
        )
    _plot_curves(run_dir, primary)
    best = result.best_metric
    tail = f" (best {best['name']} {best['value']:.4f} at step {best['step']})" if best else ""
    if result.interrupted:
        by = f" by {result.stop_signal}" if result.stop_signal else ""
        say(
            f"stopped at step {result.step}{by}: run saved in {run_dir}{tail}; continue it "
            f"with `visionlab train --resume {run_dir}`"
        )
    else:
        say(f"done: run saved in {run_dir}{tail}")


def _plot_curves(run_dir: Path, primary: str | None) -> None:
    """``curves.png``: training loss, learning rate and the primary validation metric."""
    from visionlab.engine.logging import read_metrics
    from visionlab.viz import plot_curves

    records = read_metrics(run_dir / "metrics.jsonl")
    wanted = ["loss", "lr"] + ([f"val/{primary}"] if primary else [])
    keys = [k for k in wanted if any(k in r for r in records)]
    if keys:
        plot_curves(
            run_dir / "metrics.jsonl", keys, run_dir / "curves.png", run_dir.name, smooth=0.6
        )
