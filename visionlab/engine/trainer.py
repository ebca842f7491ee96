"""The training loop: batch -> loss dict -> sum -> backward -> step; hooks do the rest.

Modelled on detectron2's ``SimpleTrainer``: :meth:`Trainer.run_step` is the whole
algorithm (with gradient accumulation, mixed precision and clipping); logging, evaluation,
checkpoints and unfreezing are :class:`visionlab.engine.hooks.HookBase` objects called after
every step. Steps are optimizer steps; an epoch is one pass of the loader, so with
``accumulate=k`` an epoch has ``ceil(len(loader) / k)`` steps (the last one may average
fewer batches).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from visionlab.data.loader import build_loader, collate_for, set_epoch
from visionlab.engine import distributed
from visionlab.engine.checkpoint import rng_state, set_rng_state
from visionlab.errors import ConfigError, VisionLabError
from visionlab.tasks import Task, to_device

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


class NonFiniteLossError(VisionLabError):
    """A loss term became NaN or infinite; training stopped before applying that step."""


# ---------------------------------------------------------------------- optimizer, lr


def param_groups(
    model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """Parameter groups: weights decay, norm parameters and biases do not (the usual rule,
    e.g. timm's ``param_groups_weight_decay``); ``model.backbone_parameters()`` (when the
    model has it) train at ``lr * backbone_lr_mult``. Frozen parameters are included, so
    unfreezing them later needs no new optimizer."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    backbone: set[int] = set()
    if backbone_lr_mult != 1.0 and hasattr(model, "backbone_parameters"):
        backbone = {id(p) for p in model.backbone_parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        decay = p.ndim > 1 and id(p) not in no_decay
        groups.setdefault((id(p) in backbone, decay), []).append(p)
    return [
        {
            "params": params,
            "lr": lr * (backbone_lr_mult if is_backbone else 1.0),
            "weight_decay": weight_decay if decay else 0.0,
            "name": ("backbone" if is_backbone else "model") + ("" if decay else "/no_decay"),
        }
        for (is_backbone, decay), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, optim: Any) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW from an :class:`OptimConfig`."""
    groups = param_groups(
        model, lr=optim.lr, weight_decay=optim.weight_decay, backbone_lr_mult=optim.backbone_lr_mult
    )
    if optim.name == "sgd":
        return torch.optim.SGD(
            groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov
        )
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas))
    raise ValueError(f"unknown optimizer {optim.name!r}")


@dataclass
class LRSchedule:
    """Learning-rate multiplier at optimizer step ``k`` (0-based), for :class:`LambdaLR`.

    Linear warm-up from ``warmup_factor`` to 1 over ``warmup_steps``; then ``cosine`` decays
    to ``min_lr_factor`` at ``total_steps``, ``step`` multiplies by ``gamma`` at each step in
    ``milestones`` (already in steps), ``constant`` stays at 1. Plain attributes only, so
    LambdaLR's state_dict stays plain data.
    """

    name: str
    total_steps: int
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    min_lr_factor: float = 0.0

    def __call__(self, k: int) -> float:
        if self.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, max(0, k - self.warmup_steps) / span)
            factor = self.min_lr_factor + (1 - self.min_lr_factor) * 0.5 * (
                1 + math.cos(math.pi * t)
            )
        elif self.name == "step":
            factor = self.gamma ** sum(k >= m for m in self.milestones)
        else:
            factor = 1.0
        if k < self.warmup_steps:
            alpha = k / self.warmup_steps
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: Any, *, total_steps: int, steps_per_epoch: int
) -> LambdaLR:
    """Per-step LambdaLR from a :class:`ScheduleConfig`; milestones are given in epochs."""
    fn = LRSchedule(
        schedule.name,
        total_steps=total_steps,
        warmup_steps=schedule.warmup_steps,
        warmup_factor=schedule.warmup_factor,
        milestones=[m * steps_per_epoch for m in schedule.milestones],
        gamma=schedule.gamma,
        min_lr_factor=schedule.min_lr_factor,
    )
    return LambdaLR(optimizer, fn)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in none | bf16 | fp16 on ``device``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------------------ loop


class Trainer:
    """Runs optimizer steps until ``max_steps``; hooks see the trainer after every step.

    Args:
        model: the module to train (wrapped in DistributedDataParallel when distributed).
        loader: training DataLoader built by :func:`visionlab.data.loader.build_loader`.
        scheduler: stepped once per optimizer step.
        max_steps: optimizer steps of the whole run (the schedule's length).
        accumulate: batches per optimizer step; each batch's loss is divided by their count.
        grad_clip: max global L2 norm of the gradients (None: no clipping).
        amp: "none", "bf16" or "fp16" (fp16 uses ``scaler``).
        stop_at_step: stop right after this step as if interrupted (``interrupted`` is set);
            a run resumed past it goes on to ``max_steps``.
        stop: a :class:`visionlab.engine.interrupt.StopRequest`: once it holds a signal (on
            any process), every process stops after the step in progress (``stop_signal``).
        hooks: called in order; see :class:`visionlab.engine.hooks.HookBase`.

    State (what a checkpoint stores): ``step`` (optimizer steps done), ``epoch`` (epochs
    done), ``batch_in_epoch`` (batches of the current epoch consumed).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        loader: Any,
        optimizer: torch.optim.Optimizer,
        *,
        scheduler: LambdaLR | None = None,
        device: torch.device | str = "cpu",
        max_steps: int,
        accumulate: int = 1,
        grad_clip: float | None = None,
        amp: str = "none",
        scaler: torch.amp.GradScaler | None = None,
        stop_at_step: int | None = None,
        stop: Any = None,
        hooks: Iterable[Any] = (),
    ) -> None:
        if len(loader) == 0:
            raise VisionLabError("the training set gives no batch (fewer samples than a batch?)")
        self.model = model
        self.module = model.module if isinstance(model, DDP) else model
        self.task = task
        self.loader = loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.max_steps = int(max_steps)
        self.accumulate = int(accumulate)
        self.grad_clip = grad_clip
        self.amp = amp
        self.scaler = scaler or torch.amp.GradScaler(self.device.type, enabled=False)
        self.stop_at_step = stop_at_step
        self.stop = stop
        self.stop_signal: str | None = None
        self.hooks: list[Any] = []
        for hook in hooks:
            self.register_hook(hook)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.epoch_finished = False
        self.interrupted = False
        self.last_losses: dict[str, float] = {}
        self.last_lr = 0.0
        self.best_metric: dict[str, Any] | None = None
        self._iter: Any = None

    @classmethod
    def from_recipe(
        cls,
        cfg: Any,
        model: nn.Module,
        task: Task,
        dataset: Any,
        *,
        device: torch.device,
        stop: Any = None,
        hooks: Iterable[Any] = (),
        world_size: int = 1,
    ) -> Trainer:
        """The Trainer of recipe ``cfg``: a shuffled loader over ``dataset`` (``batch_size /
        world_size`` samples a batch), :func:`build_optimizer` and :func:`build_scheduler`.

        Raises:
            ConfigError: a recipe that gives no step.
        """
        per_rank = cfg.train.batch_size // world_size
        loader = build_loader(
            dataset,
            batch_size=per_rank,
            shuffle=True,
            seed=cfg.seed,
            num_workers=cfg.num_workers,
            distributed=world_size > 1,
            # full batches only (a batch of one breaks batch norm) unless the data is smaller
            drop_last=math.ceil(len(dataset) / world_size) >= per_rank,
        )
        optimizer = build_optimizer(model.module if isinstance(model, DDP) else model, cfg.optim)
        steps_per_epoch = math.ceil(len(loader) / cfg.train.accumulate)
        max_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
        if max_steps < 1:
            raise ConfigError("train.epochs: 0 epochs and no train.max_steps: nothing to train")
        scheduler = build_scheduler(
            optimizer, cfg.schedule, total_steps=max_steps, steps_per_epoch=steps_per_epoch
        )
        return cls(
            model,
            task,
            loader,
            optimizer,
            scheduler=scheduler,
            device=device,
            max_steps=max_steps,
            accumulate=cfg.train.accumulate,
            grad_clip=cfg.train.grad_clip,
            amp=cfg.train.amp,
            scaler=torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16"),
            stop_at_step=cfg.train.stop_at_step,
            stop=stop,
            hooks=hooks,
        )

    def register_hook(self, hook: Any) -> None:
        hook.trainer = self
        self.hooks.append(hook)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.loader) / self.accumulate)

    def train(self) -> None:
        """Run until ``max_steps`` (or ``stop_at_step``); hooks' ``close`` always runs."""
        try:
            for hook in self.hooks:
                hook.before_train()
            while self.step < self.max_steps:
                self.run_step()
                for hook in self.hooks:
                    hook.after_step()
                at_stop_step = self.step == self.stop_at_step and self.step < self.max_steps
                if at_stop_step or (self._stop_requested() and self.step < self.max_steps):
                    self.interrupted = True
                    break
            for hook in self.hooks:
                hook.after_train()
        finally:
            for hook in self.hooks:
                hook.close()

    def _stop_requested(self) -> bool:
        """Whether a signal asked to stop, on this process or (distributed) on any other."""
        names = ("", "SIGINT", "SIGTERM")
        signal = self.stop.signal if self.stop is not None else None
        code = torch.tensor([float(names.index(signal) if signal in names else 0)])
        self.stop_signal = names[int(distributed.all_reduce_max(code).item())] or None
        return self.stop_signal is not None

    def _next_batch(self) -> Any:
        if self._iter is None:
            set_epoch(self.loader, self.epoch, skip_batches=self.batch_in_epoch)
            self._iter = iter(self.loader)
        batch = next(self._iter)
        self.batch_in_epoch += 1
        return batch

    def run_step(self) -> None:
        """One optimizer step over ``accumulate`` batches (fewer at the end of an epoch)."""
        self.model.train()
        n_micro = min(self.accumulate, len(self.loader) - self.batch_in_epoch)
        sums: dict[str, float] = {}
        for i in range(n_micro):
            images, targets = to_device(self._next_batch(), self.device)
            sync = i == n_micro - 1 or not hasattr(self.model, "no_sync")
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with autocast(self.device, self.amp):
                    loss_dict = self.task.loss(self.model, images, targets)
                values = self._check_finite(loss_dict)
                total = sum(loss_dict.values())
                self.scaler.scale(total / n_micro).backward()
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value / n_micro
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step used
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        self.last_losses = sums
        self.epoch_finished = self.batch_in_epoch >= len(self.loader)
        if self.epoch_finished:
            self.epoch += 1
            self.batch_in_epoch = 0
            self._iter = None

    def _check_finite(self, loss_dict: dict[str, Tensor]) -> dict[str, float]:
        """Loss values (averaged over processes); raise on the first NaN / inf term."""
        if not loss_dict:
            raise VisionLabError(f"step {self.step + 1}: the model returned no loss terms")
        values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])
        values = distributed.all_reduce_mean(values).tolist()  # every rank sees the same
        for key, value in zip(loss_dict, values):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"step {self.step + 1}: {key} is {value} (training stopped; the last "
                    f"checkpoint is from before this step)"
                )
        return dict(zip(loss_dict, values))

    # ------------------------------------------------------------------ resume state

    def state_dict(self) -> dict[str, Any]:
        """Everything but the model needed to continue exactly: plain data and tensors."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng_state(),
            "sampler": {
                **getattr(self.loader.sampler, "state_dict", dict)(),
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
            },
            "best_metric": self.best_metric,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model's weights are loaded by the caller)."""
        self.step = int(state["step"])
        self.epoch = int(state["sampler"]["epoch"])
        self.batch_in_epoch = int(state["sampler"]["batch_in_epoch"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.best_metric = state.get("best_metric")
        set_rng_state(state["rng"])
        self._iter = None


def eval_loader(
    dataset: Any, *, batch_size: int, seed: int = 0, num_workers: int = 0, limit: int = 0
) -> Any:
    """A loader over the first ``limit`` samples of ``dataset`` (0: all), in order."""
    collate_fn = collate_for(getattr(dataset, "task", "detection"))
    if limit and limit < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(limit))
    return build_loader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        seed=seed,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    loader: Iterable[Any],
    evaluator: Any,
    *,
    device: torch.device | str = "cpu",
    amp: str = "none",
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``model`` (in eval mode) over ``loader`` and return ``evaluator.compute()``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        for images, targets in tqdm(loader, desc="eval", disable=not progress, leave=False):
            images = to_device(images, device)
            with autocast(device, amp):
                outputs = task.eval_outputs(model, images, targets)
            evaluator.update(to_device(outputs, "cpu"), task.eval_targets(targets))
    finally:
        model.train(was_training)
    return evaluator.compute()
