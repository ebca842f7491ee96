"""Trainer hooks: logging, evaluation with best-metric tracking, checkpoints, unfreezing.

A hook sees the trainer (``self.trainer``) at four points: ``before_train``, ``after_step``
(``trainer.epoch_finished`` tells whether that step ended an epoch), ``after_train`` (only when
training ended normally or by ``stop_at_step``; ``trainer.interrupted`` tells which) and
``close`` (always, even after an error). Hooks run in the order given; evaluation must come
before checkpointing so that ``last.pt`` records the best metric so far.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from visionlab.engine import distributed
from visionlab.engine.logging import MetricsLogger


class HookBase:
    """No-op hook; subclasses override what they need."""

    trainer: Any = None

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def close(self) -> None:
        pass


class LoggingHook(HookBase):
    """A tqdm bar over the steps (epoch, loss, lr); a ``metrics.jsonl`` / TensorBoard record
    every ``log_every`` steps with the losses averaged over the steps since the previous one.

    Args:
        logger: the run's MetricsLogger (None on non-main processes: nothing is written).
        log_every: steps between records (the last step and epoch ends are always logged).
        progress: show the tqdm bar.
    """

    def __init__(self, logger: MetricsLogger | None, *, log_every: int, progress: bool) -> None:
        self.logger = logger
        self.log_every = log_every
        self.progress = progress
        self._bar: tqdm | None = None
        self._sums: dict[str, float] = {}
        self._count = 0

    def before_train(self) -> None:
        self._bar = tqdm(
            total=self.trainer.max_steps,
            initial=self.trainer.step,
            disable=not (self.progress and distributed.is_main()),
            unit="step",
            dynamic_ncols=True,
            leave=True,
        )

    def after_step(self) -> None:
        t = self.trainer
        for key, value in t.last_losses.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1
        if self._bar is not None:
            loss = sum(t.last_losses.values())
            shown = f"epoch {self._epoch():.2f} loss {loss:.4f} lr {t.last_lr:.3g}"
            self._bar.set_postfix_str(shown, refresh=False)
            self._bar.update(t.step - self._bar.n)
        if t.step % self.log_every == 0 or t.epoch_finished or t.step == t.max_steps:
            self._flush()

    def after_train(self) -> None:
        if self._count:  # stopped early: keep the losses since the last record
            self._flush()

    def _flush(self) -> None:
        t = self.trainer
        losses = {k: v / self._count for k, v in self._sums.items()}
        if self.logger is not None:
            self.logger.write(
                {
                    "type": "train",
                    "step": t.step,
                    "epoch": self._epoch(),
                    "lr": t.last_lr,
                    "loss": sum(losses.values()),
                    **losses,
                }
            )
        self._sums, self._count = {}, 0

    def _epoch(self) -> float:
        """Epochs done, fractional: 1.5 = halfway through the second epoch."""
        t = self.trainer
        return round(t.epoch + t.batch_in_epoch / len(t.loader), 4)

    def write(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(text)
        elif distributed.is_main():
            print(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EvalHook(HookBase):
    """Evaluate every ``every`` epochs and at the end; track the best ``primary`` metric.

    Only the main process evaluates (over the whole validation set, with the unwrapped
    model); the others wait at a barrier. Higher is better.

    Args:
        eval_fn: runs one evaluation and returns the metrics dict.
        every: epochs between evaluations (0: only at the end of training).
        primary: the metric that picks ``best.pt`` (the evaluator's ``primary``).
        on_best: called after a new best (saves ``best.pt``).
        logger: where the eval record goes; ``say`` prints a one-line summary.
    """

    def __init__(
        self,
        eval_fn: Callable[[], dict[str, Any]],
        *,
        every: int,
        primary: str,
        on_best: Callable[[], None] | None = None,
        logger: MetricsLogger | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.eval_fn = eval_fn
        self.every = every
        self.primary = primary
        self.on_best = on_best
        self.logger = logger
        self.say = say
        self.last_metrics: dict[str, Any] | None = None
        self._last_step = -1

    def after_step(self) -> None:
        t = self.trainer
        if t.epoch_finished and self.every > 0 and t.epoch % self.every == 0:
            self._evaluate()

    def after_train(self) -> None:
        if not self.trainer.interrupted and self._last_step != self.trainer.step:
            self._evaluate()

    def _evaluate(self) -> None:
        t = self.trainer
        self._last_step = t.step
        if distributed.is_main():
            metrics = self.eval_fn()
            self.last_metrics = metrics
            value = metrics.get(self.primary)
            if self.logger is not None:
                scalars = {
                    f"val/{k}": v
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
                self.logger.write(
                    {
                        "type": "eval",
                        "step": t.step,
                        "epoch": t.epoch,
                        **scalars,
                        "metrics": metrics,
                    }
                )
            best = t.best_metric
            improved = isinstance(value, int | float) and (
                best is None or float(value) > float(best["value"])
            )
            if improved:
                t.best_metric = {"name": self.primary, "value": float(value), "step": t.step}
            shown = ", ".join(
                f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, int | float)
            )
            self.say(
                f"eval @ step {t.step} (epoch {t.epoch}): {shown}" + (" *" if improved else "")
            )
            if improved and self.on_best is not None:
                self.on_best()
        distributed.barrier()


class CheckpointHook(HookBase):
    """Save ``last.pt`` at every epoch end, every ``save_every`` steps and when training ends
    (also when stopped by ``stop_at_step``); never after a failed step, because a failed step
    raises before any hook runs.

    Args:
        save_fn: ``save_fn("last")`` writes ``checkpoints/last.pt`` (main process only).
        save_every: extra saves every N steps (0: none).
    """

    def __init__(self, save_fn: Callable[[str], Any], *, save_every: int = 0) -> None:
        self.save_fn = save_fn
        self.save_every = save_every
        self._last_step = -1

    def _save(self) -> None:
        self._last_step = self.trainer.step
        if distributed.is_main():
            self.save_fn("last")

    def after_step(self) -> None:
        t = self.trainer
        if t.epoch_finished or (self.save_every and t.step % self.save_every == 0):
            self._save()

    def after_train(self) -> None:
        if self._last_step != self.trainer.step:
            self._save()


class UnfreezeHook(HookBase):
    """Call ``unfreeze()`` once ``after_epochs`` epochs are done (also on resume past it)."""

    def __init__(self, unfreeze: Callable[[], None], *, after_epochs: int) -> None:
        self.unfreeze = unfreeze
        self.after_epochs = after_epochs
        self.done = False

    def before_train(self) -> None:
        if not self.done and self.trainer.epoch >= self.after_epochs:
            self.unfreeze()
            self.done = True

    after_step = before_train  # the epoch count changes only at an epoch's end
