"""Training in stages, each checkpointed, of a detector that declares
:attr:`~visionlab.models.detector.Detector.stages` (R-CNN, SPPNet). The model does each
stage's work (``model.run_stage``; caches under ``RUN/cache/``) but its ``train_stage``'s,
which the engine's :class:`Trainer` runs on ``model.train_stage_data``. After each stage
``RUN/checkpoints/last.pt`` holds the model and ``stages_done`` (in the train stage also the
Trainer's state), so ``--resume RUN`` continues where it stopped.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tqdm.auto import tqdm

from visionlab.config import Config, save_config
from visionlab.engine import distributed
from visionlab.engine.checkpoint import save_checkpoint
from visionlab.engine.common import TrainResult, load_weights, make_transform, write_eval_json
from visionlab.engine.hooks import CheckpointHook, LoggingHook
from visionlab.engine.interrupt import StopRequest
from visionlab.engine.logging import MetricsLogger
from visionlab.engine.rundir import CACHE_DIR, CHECKPOINT_DIR, RunFolder
from visionlab.engine.trainer import Trainer, eval_loader, evaluate
from visionlab.tasks import get_task

__all__ = ["run_stages"]

_say = tqdm.write


def _subset(n_total: int, wanted: int, seed: int) -> list[int]:
    """A seeded random subset of ``wanted`` indices (all when ``wanted`` <= 0), sorted."""
    if wanted <= 0 or wanted >= n_total:
        return list(range(n_total))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=generator)[:wanted].tolist())


def run_stages(
    cfg: Config,
    info: Any,
    model: Any,
    train_ds: Any,
    val_ds: Any,
    meta: dict[str, Any],
    device: torch.device,
    folder: RunFolder,
    resume_state: dict[str, Any] | None,
) -> TrainResult:
    """Run the stages of ``model`` in one process (under torchrun only rank 0, alone), then
    evaluate on its ``stage_eval_images`` validation images into ``RUN/eval.json``.

    Args:
        model: the built model (on ``device``), whose ``stages`` are not empty.
        val_ds: the validation split (None: no final evaluation).
        meta: the checkpoint's metadata (:func:`visionlab.engine.common.checkpoint_meta`).
        resume_state: the loaded ``last.pt`` of a resumed run.

    Returns:
        The :class:`TrainResult` (``step`` = number of finished stages).
    """
    run_dir = folder.path
    ckpt_dir = run_dir / CHECKPOINT_DIR
    last_path = ckpt_dir / "last.pt"
    if info.enabled:  # one process trains: rank 0, alone, out of the process group
        distributed.cleanup()
        if not info.is_main:
            return TrainResult(run_dir=run_dir, step=0, interrupted=False)
        _say(f"{cfg.model}: the stages train in one process (rank 0); the other ranks exit")
    task = get_task(cfg.task)
    state = resume_state or {}
    done: list[str] = list(state.get("stages_done") or [])
    if resume_state is not None:
        load_weights(model, state["model"], last_path, cfg.model)
        _say(f"resuming after stage(s): {', '.join(done) or 'none'}")
    else:  # config.yaml keeps the recipe the run started with
        save_config(cfg, run_dir / "config.yaml")
    # the stages see the training images as evaluation does; the train stage adds its flips
    train_ds.transforms = make_transform("detection", False, cfg.image_size, {})
    indices = _subset(len(train_ds), model.stage_images, cfg.seed)
    cache = run_dir / CACHE_DIR
    position = {"step": int(state.get("step", 0)), "epoch": int(state.get("epoch", 0))}
    stats_all: dict[str, Any] = dict(state.get("stage_stats") or {})

    def save(extra: dict[str, Any]) -> None:
        """``last.pt``: the model, the stages done, and ``extra`` (the Trainer's state)."""
        payload = {"model": model.state_dict(), **meta, **position, **extra}
        save_checkpoint(last_path, {**payload, "stages_done": done, "stage_stats": stats_all})
        folder.checkpoint_saved()

    def save_trainer(_: str) -> None:  # the CheckpointHook's: the Trainer's state too
        save(trainer.state_dict())

    logger = MetricsLogger(run_dir, resume_step=position["step"] if resume_state else None)
    trainer, name = None, ""
    with StopRequest(say=_say) as stop:
        try:
            for name in (n for n in model.stages if n not in done):
                if stop.signal:  # asked for as the Trainer ended: stop before the next stage
                    break
                tick = time.perf_counter()
                stop.immediate = name != model.train_stage  # the Trainer stops between steps
                if name == model.train_stage:
                    samples = model.train_stage_data(train_ds, indices, cache=cache)
                    log = LoggingHook(
                        logger, log_every=cfg.train.log_every, progress=cfg.train.progress
                    )
                    ckpt = CheckpointHook(save_trainer, save_every=cfg.train.save_every)
                    trainer = Trainer.from_recipe(
                        cfg, model, task, samples, device=device, stop=stop, hooks=[log, ckpt]
                    )
                    if "optimizer" in state:  # stopped in this stage: continue exactly
                        trainer.load_state_dict(state)
                    trainer.train()
                    if trainer.interrupted:
                        break
                    position = {"step": trainer.step, "epoch": trainer.epoch}
                    stats = {"steps": trainer.step, "loss": sum(trainer.last_losses.values())}
                else:
                    stats = model.run_stage(
                        name, train_ds, indices, cache=cache, progress=cfg.train.progress
                    )
                stats = {**stats, "seconds": round(time.perf_counter() - tick, 2)}
                done.append(name)
                stats_all[name] = stats
                logger.write({"type": "stage", "stage": name, **position, **stats})
                _say(f"stage {len(done)}/{len(model.stages)} {name}: {_brief(stats)}")
                save({})
        except KeyboardInterrupt:  # the finished stages are saved: say how to go on
            _say(f"interrupted during stage {name!r}")
        finally:
            logger.close()
    finished = len(done) == len(model.stages)
    eval_images = model.stage_eval_images
    metrics = None
    if finished and val_ds is not None and eval_images >= 0:
        loader = eval_loader(val_ds, batch_size=8, seed=cfg.seed, limit=eval_images)
        evaluator = task.evaluator(list(meta["classes"]), meta.get("predicates") or [])
        metrics = evaluate(model, task, loader, evaluator, device=device, progress=True)
        write_eval_json(
            run_dir / "eval.json",
            {
                "checkpoint": str(last_path),
                "data": cfg.data,
                "split": cfg.val_split,
                "images": eval_images or "all",
                "step": position["step"],
                "metrics": metrics,
            },
        )
        _say(f"val ({eval_images or 'all'} images): " + _brief(metrics))
    if finished:
        _say(f"done: run saved in {run_dir}; checkpoint {last_path}")
    else:
        where = f"after stage {done[-1] if done else 'none'}"
        if trainer is not None and trainer.interrupted:
            where = f"in stage {name} at step {trainer.step}"
        _say(f"stopped {where}: continue it with `visionlab train --resume {run_dir}`")
    return TrainResult(
        run_dir=run_dir,
        step=len(done),
        metrics=metrics,
        interrupted=not finished,
        stop_signal=stop.signal,
        checkpoints={p.stem: p for p in sorted(ckpt_dir.glob("*.pt"))},
    )


def _brief(stats: dict[str, Any]) -> str:
    keys = [k for k, v in stats.items() if isinstance(v, int | float) and "/" not in k]
    return ", ".join(f"{k} {stats[k]:.4g}" for k in keys[:8])
