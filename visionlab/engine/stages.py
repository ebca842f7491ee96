"""Multi-stage training of R-CNN and SPPNet, each stage checkpointed (R-CNN, Girshick et al.
2014, sec. 2.3; SPPNet, He et al. 2014, sec. 4).

``visionlab train configs/rcnn_scenes.yaml`` runs, in order:

1. ``proposals``: selective search over the training images (cached on disk by
   :func:`visionlab.ops.selective_search`; the boxes also go to ``RUN/cache/proposals.pt``).
2. ``finetune``: the CNN as an (N + 1)-way classifier of regions (``loss_classifier``), with the
   recipe's ``optim``, ``schedule`` and ``train`` (``batch_size`` images per step,
   ``epochs`` or ``max_steps``).
3. ``features``: fc7 features of the ground-truth boxes and of every proposal, pool
   features of the proposals with IoU > ``box_reg.min_iou``, as plain tensors in
   ``RUN/cache/features.pt``.
4. ``svm``: one linear SVM per class with hard negative mining.
5. ``box_reg``: one ridge regressor per class.

After each stage ``RUN/checkpoints/last.pt`` holds the model (SVMs and regressors are
buffers of its state dict) and ``stages_done``; ``visionlab train --resume RUN`` continues
after the last finished stage. A final evaluation on ``finetune.eval_images`` validation
images writes ``RUN/eval.json``. Stage settings are the model's (``model_args.finetune``,
``svm``, ``box_reg``), so a checkpoint records how it was trained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from visionlab.config import Config, save_config
from visionlab.engine.checkpoint import save_checkpoint
from visionlab.engine.common import (
    TrainResult,
    check_resumed,
    checkpoint_meta,
    load_weights,
    make_transform,
    model_kwargs,
    plain_build_args,
    resolve_device,
    seed_everything,
    write_eval_json,
)
from visionlab.engine.interrupt import StopRequest
from visionlab.engine.rundir import CHECKPOINT_DIR, RunFolder
from visionlab.errors import CheckpointError, ConfigError, DataError

__all__ = ["STAGES", "is_multi_stage", "run_stages"]

STAGES = ("proposals", "finetune", "features", "svm", "box_reg")
CACHE_DIR = "cache"


def is_multi_stage(model_name: str) -> bool:
    """Whether ``visionlab train`` runs this registered model's stages (R-CNN, SPPNet)."""
    from visionlab.models.rcnn import MULTI_STAGE_MODELS
    from visionlab.models.registry import is_registered

    return is_registered(model_name) and model_name in MULTI_STAGE_MODELS


def _say(message: str) -> None:
    tqdm.write(message)


# ------------------------------------------------------------------------------ data


def _subset(n_total: int, wanted: int, seed: int) -> list[int]:
    """A seeded random subset of ``wanted`` indices (all when ``wanted`` <= 0), sorted."""
    if wanted <= 0 or wanted >= n_total:
        return list(range(n_total))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=generator)[:wanted].tolist())


def _save_boxes(path: Path, boxes: Sequence[Tensor]) -> None:
    from visionlab.engine.checkpoint import atomic_write

    counts = torch.tensor([len(b) for b in boxes], dtype=torch.int64)
    flat = torch.cat(list(boxes)) if boxes else torch.zeros((0, 4))
    atomic_write(path, lambda f: torch.save({"boxes": flat, "counts": counts}, f))


def _load_boxes(path: Path) -> list[Tensor]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return list(data["boxes"].split(data["counts"].tolist()))


def _hflip(image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """Mirror an image with its ``boxes`` and ``proposals``."""
    width = image.shape[-1]
    out = dict(target)
    for key in ("boxes", "proposals"):
        b = target[key]
        out[key] = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
    return image.flip(-1), out


# ---------------------------------------------------------------------------- stages


class StageRunner:
    """The state shared by the stages of one run: data, model, run directory."""

    def __init__(self, cfg: Config, model: Any, dataset: Any, indices: list[int], device: Any):
        self.cfg = cfg
        self.model = model
        self.dataset = dataset
        self.indices = indices
        self.device = device
        self.run_dir = cfg.run_dir()
        self.cache = self.run_dir / CACHE_DIR
        self.progress = cfg.train.progress

    def _bar(self, iterable: Any, desc: str, total: int | None = None) -> Any:
        return tqdm(iterable, desc=desc, total=total, disable=not self.progress, dynamic_ncols=True)

    def proposals(self) -> dict[str, float]:
        """Selective search over the training images (cached on disk)."""
        boxes = []
        for i in self._bar(self.indices, "proposals"):
            image, _ = self.dataset[i]
            boxes.append(self.model.propose(image))
        _save_boxes(self.cache / "proposals.pt", boxes)
        return {"mean_proposals": sum(len(b) for b in boxes) / max(1, len(boxes))}

    def _proposals(self) -> list[Tensor]:
        path = self.cache / "proposals.pt"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; run the `proposals` stage again")
        return _load_boxes(path)

    def finetune(self, logger: Any) -> dict[str, float]:
        """(N + 1)-way fine-tuning of the CNN on warped / pooled regions."""
        from visionlab.engine.trainer import build_optimizer, build_scheduler

        cfg, model = self.cfg, self.model
        proposals = self._proposals()
        settings = model.finetune_settings
        if not settings.train_conv:
            for p in model.backbone.parameters():
                p.requires_grad_(False)
        per_step = cfg.train.batch_size
        steps_per_epoch = math.ceil(len(self.indices) / per_step)
        total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
        if total < 1:
            raise ConfigError("train.epochs: 0 epochs and no train.max_steps: nothing to fine-tune")
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(
            optimizer, cfg.schedule, total_steps=total, steps_per_epoch=steps_per_epoch
        )
        generator = torch.Generator().manual_seed(cfg.seed)
        model.train()
        if not settings.train_conv:
            model.backbone.eval()  # frozen conv layers keep their batch-norm statistics
        order: list[int] = []
        running, start = None, time.perf_counter()
        bar = self._bar(range(total), "finetune")
        for step in bar:
            if len(order) < per_step:
                order += torch.randperm(len(self.indices), generator=generator).tolist()
            batch, order = order[:per_step], order[per_step:]
            images, targets = [], []
            for j in batch:
                image, target = self.dataset[self.indices[j]]
                target = {**target, "proposals": proposals[j]}
                if settings.hflip and torch.rand((), generator=generator) < 0.5:
                    image, target = _hflip(image, target)
                images.append(image.to(self.device))
                targets.append({k: _to(v, self.device) for k, v in target.items()})
            loss = model(images, targets)["loss_classifier"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = loss.item()
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.set_postfix(loss=f"{running:.3f}")
            if logger is not None and (step + 1) % max(1, cfg.train.log_every) == 0:
                lr = optimizer.param_groups[0]["lr"]
                logger.write({"step": step + 1, "stage": "finetune", "loss": value, "lr": lr})
        model.eval()
        return {"steps": total, "loss": running or 0.0, "seconds": time.perf_counter() - start}

    @torch.no_grad()
    def features(self) -> dict[str, float]:
        """fc7 of gt boxes and proposals, pool features of the regression set, to disk."""
        from visionlab.ops import box_iou

        model = self.model.eval()
        proposals = self._proposals()
        num_fg = model.num_classes - 1
        min_iou = model.box_reg_settings.min_iou
        pos, pos_labels, neg, neg_iou, reg_x, reg_t, reg_labels = [], [], [], [], [], [], []
        for j, i in enumerate(self._bar(self.indices, "features")):
            image, target = self.dataset[i]
            image = image.to(self.device)
            gt, labels = target["boxes"].to(self.device), target["labels"].to(self.device)
            props = proposals[j].to(self.device)
            pooled = model.pool_features([image, image], [gt, props])
            fc7 = model.fc_features(pooled)
            pos.append(fc7[: len(gt)].cpu())
            pos_labels.append(labels.cpu())
            pooled_p, fc7_p = pooled[len(gt) :], fc7[len(gt) :]
            neg.append(fc7_p.half().cpu())
            class_iou = torch.zeros(len(props), num_fg, device=self.device)
            if len(gt):
                iou = box_iou(gt, props)  # [G, K]
                for g in range(len(gt)):  # best IoU with any instance of each class
                    c = int(labels[g]) - 1
                    class_iou[:, c] = torch.maximum(class_iou[:, c], iou[g])
                best, arg = iou.max(dim=0)
                sel = best > min_iou
                reg_x.append(pooled_p[sel].cpu())
                reg_t.append(model.box_coder.encode(gt[arg[sel]], props[sel]).cpu())
                reg_labels.append(labels[arg[sel]].cpu())
            neg_iou.append(class_iou.half().cpu())

        def cat(parts: list[Tensor], shape: tuple[int, ...], dtype=torch.float32) -> Tensor:
            return torch.cat(parts) if parts else torch.zeros(shape, dtype=dtype)

        data = {
            "pos": cat(pos, (0, model.head[3].out_features)),
            "pos_labels": cat(pos_labels, (0,), torch.int64),
            "props": cat(neg, (0, model.head[3].out_features)),
            "props_class_iou": cat(neg_iou, (0, num_fg)),
            "reg_features": cat(reg_x, (0, model.pool_dim)),
            "reg_targets": cat(reg_t, (0, 4)),
            "reg_labels": cat(reg_labels, (0,), torch.int64),
        }
        from visionlab.engine.checkpoint import atomic_write

        atomic_write(self.cache / "features.pt", lambda f: torch.save(data, f))
        return {
            "positives": len(data["pos"]),
            "proposals": len(data["props"]),
            "regression_samples": len(data["reg_features"]),
        }

    def _features(self) -> dict[str, Tensor]:
        path = self.cache / "features.pt"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; run the `features` stage again")
        return torch.load(path, map_location="cpu", weights_only=True)

    @torch.no_grad()
    def svm(self) -> dict[str, float]:
        """One linear SVM per class, hard negative mining over the cached proposals."""
        from visionlab.models.svm import mine_hard_negatives

        model, data = self.model, self._features()
        settings = model.svm_settings
        all_fc = torch.cat([data["pos"], data["props"].float()])
        scale = settings.feat_norm / all_fc.norm(dim=1).mean().clamp(min=1e-6)
        stats: dict[str, float] = {"feature_scale": float(scale)}
        weight = torch.zeros_like(model.svm_weight, device="cpu")
        bias = torch.zeros_like(model.svm_bias, device="cpu")
        for c in self._bar(range(1, model.num_classes), "svm"):
            positives = data["pos"][data["pos_labels"] == c] * scale
            negatives = data["props"][data["props_class_iou"][:, c - 1].float() < settings.neg_iou]
            chunks = [chunk.float() * scale for chunk in negatives.chunk(max(1, settings.chunks))]
            if len(positives) == 0:
                bias[c - 1] = -10.0  # never seen: never fires
                continue
            w, b, info = mine_hard_negatives(positives, chunks, settings)
            weight[c - 1], bias[c - 1] = w, b
            stats[f"cache/{c}"] = info["cache"]
            stats[f"negatives/{c}"] = info["seen"]
        model.svm_weight.copy_(weight)
        model.svm_bias.copy_(bias)
        model.svm_scale.fill_(float(scale))
        model.svm_fitted.fill_(True)
        return stats

    @torch.no_grad()
    def box_reg(self) -> dict[str, float]:
        """One ridge regressor per class from pool features to box deltas."""
        from visionlab.models.svm import fit_ridge

        model, data = self.model, self._features()
        settings = model.box_reg_settings
        x = data["reg_features"]
        scale = settings.feat_norm / x.norm(dim=1).mean().clamp(min=1e-6) if len(x) else 1.0
        weight = torch.zeros_like(model.bbox_weight, device="cpu")
        stats: dict[str, float] = {"samples": len(x)}
        for c in self._bar(range(1, model.num_classes), "box_reg"):
            sel = data["reg_labels"] == c
            if int(sel.sum()) == 0:
                continue
            weight[c - 1] = fit_ridge(
                x[sel] * scale, data["reg_targets"][sel], ridge=settings.ridge
            )
            stats[f"samples/{c}"] = int(sel.sum())
        model.bbox_weight.copy_(weight)
        model.bbox_scale.fill_(float(scale))
        model.bbox_fitted.fill_(True)
        return stats


def _to(value: Any, device: Any) -> Any:
    return value.to(device) if isinstance(value, Tensor) else value


# ------------------------------------------------------------------------------ run


def run_stages(
    cfg: Config,
    info: Any,
    *,
    folder: RunFolder,
    resume_state: dict[str, Any] | None = None,
    until: str | None = None,
    stage_hooks: dict[str, Callable[[], None]] | None = None,
) -> TrainResult:
    """Run the stages of a multi-stage recipe (see the module docstring).

    Args:
        cfg: the resolved recipe (``model`` is ``rcnn`` or ``sppnet``).
        info: the process's distributed info. The stages run in one process: under
            torchrun the main process trains and the others return at once.
        folder: the locked run folder (:func:`visionlab.engine.rundir.open_run_folder`).
        resume_state: the loaded ``last.pt`` of a resumed run: continue after its last
            finished stage.
        until: stop after this stage (tests; a stopped run resumes from there).
        stage_hooks: callables run before a stage by name (tests).

    Returns:
        The :class:`TrainResult` (``step`` = number of finished stages).
    """
    from visionlab.data.datasets import load_dataset
    from visionlab.engine.logging import MetricsLogger
    from visionlab.models.registry import build_model
    from visionlab.tasks import get_task

    if cfg.task != "detection":
        raise ConfigError(f"model {cfg.model!r} is a detection model; set task: detection")
    if until is not None and until not in STAGES:
        raise ConfigError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    run_dir = folder.path
    ckpt_dir = run_dir / CHECKPOINT_DIR
    last_path = ckpt_dir / "last.pt"
    if info is not None and getattr(info, "world_size", 1) > 1 and not info.is_main:
        return TrainResult(run_dir=run_dir, step=0, interrupted=False)
    if info is not None and getattr(info, "world_size", 1) > 1:
        _say(
            f"{cfg.model}: the stages train in one process; this one (rank 0) trains, the "
            f"other {info.world_size - 1} exit"
        )
    device = resolve_device(cfg.device)
    resume = resume_state is not None
    state = resume_state
    _say(f"run: {run_dir}")

    transform = make_transform("detection", False, cfg.image_size, {})
    dataset = load_dataset(cfg.data, cfg.train_split, task="detection", transforms=transform)
    if len(dataset) == 0:
        raise DataError(cfg.data, f"split {cfg.train_split!r} has no images")
    classes = list(dataset.classes)
    task = get_task("detection")
    if state is not None:
        check_resumed(state, cfg, classes, last_path)
    kwargs = model_kwargs(cfg, task, classes, resume)
    seed_everything(cfg.seed, cfg.deterministic)
    model = build_model(cfg.model, **kwargs).to(device)
    model_args = plain_build_args(model, kwargs)
    done: list[str] = []
    if state is not None:
        load_weights(model, state["model"], last_path, cfg.model)
        done = list(state.get("stages_done") or [])
        _say(f"resuming after stage(s): {', '.join(done) or 'none'}")
    indices = _subset(len(dataset), model.finetune_settings.images, cfg.seed)
    runner = StageRunner(cfg, model, dataset, indices, device)
    meta = checkpoint_meta(model_args, cfg, classes, list(getattr(dataset, "predicates", [])))

    if not resume:  # config.yaml keeps the recipe the run started with
        save_config(cfg, run_dir / "config.yaml")
    logger = MetricsLogger(run_dir, resume_step=len(done) if resume else None)
    stats_all: dict[str, Any] = dict(state.get("stage_stats") or {}) if state else {}
    with StopRequest(immediate=True, say=_say) as stop:  # SIGTERM stops like Ctrl-C
        try:
            for name in STAGES:
                if name in done:
                    continue
                if stage_hooks and name in stage_hooks:
                    stage_hooks[name]()
                tick = time.perf_counter()
                method = getattr(runner, name)
                stats = method(logger) if name == "finetune" else method()
                stats = {**stats, "seconds": round(time.perf_counter() - tick, 2)}
                done.append(name)
                stats_all[name] = stats
                logger.write({"step": len(done), "stage": name, **stats})
                _say(f"stage {len(done)}/{len(STAGES)} {name}: {_brief(stats)}")
                payload = {
                    "model": model.state_dict(),
                    **meta,
                    "step": len(done),
                    "epoch": 0,
                    "stages_done": list(done),
                    "stage_stats": stats_all,
                }
                save_checkpoint(last_path, payload)
                folder.checkpoint_saved()
                if until == name:
                    break
        except KeyboardInterrupt:  # the finished stages are saved: say how to go on
            _say(f"interrupted during stage {name!r}")
        finally:
            logger.close()
    finished = len(done) == len(STAGES)
    metrics = None
    if finished and cfg.val_split and model.finetune_settings.eval_images >= 0:
        metrics = _final_eval(cfg, model, classes, device)
        write_eval_json(
            run_dir / "eval.json",
            {
                "checkpoint": str(last_path),
                "data": cfg.data,
                "split": cfg.val_split,
                "images": model.finetune_settings.eval_images or "all",
                "step": len(done),
                "metrics": metrics,
            },
        )
        _say(f"val ({model.finetune_settings.eval_images or 'all'} images): " + _brief(metrics))
    if finished:
        _say(f"done: run saved in {run_dir}; checkpoint {last_path}")
    else:
        _say(
            f"stopped after stage {done[-1] if done else 'none'}: continue it with "
            f"`visionlab train --resume {run_dir}`"
        )
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


def _final_eval(cfg: Config, model: Any, classes: list[str], device: Any) -> dict[str, Any]:
    """Score ``finetune.eval_images`` validation images with the shared evaluator."""
    from visionlab.data.datasets import load_dataset
    from visionlab.engine.trainer import evaluate
    from visionlab.tasks import get_task

    task = get_task("detection")
    transform = make_transform("detection", False, cfg.image_size, {})
    val = load_dataset(cfg.data, cfg.val_split, task="detection", transforms=transform)
    loader = limited_loader(val, model.finetune_settings.eval_images, cfg.seed)
    return evaluate(model, task, loader, task.evaluator(classes), device=device, progress=True)


def limited_loader(dataset: Any, limit: int, seed: int, batch_size: int = 8) -> Any:
    """A detection loader over the first ``limit`` images of ``dataset`` (0 = all)."""
    from torch.utils.data import Subset

    from visionlab.data.loader import build_loader

    if limit and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    return build_loader(dataset, batch_size=batch_size, shuffle=False, seed=seed)
