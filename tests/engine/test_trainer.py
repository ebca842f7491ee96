"""The training loop: accumulation, clipping, mixed precision, NaN stop, hooks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_standins import MemoryDataset, make_trainer

from visionlab.data.loader import build_loader
from visionlab.engine.checkpoint import load_checkpoint, save_checkpoint
from visionlab.engine.hooks import CheckpointHook, EvalHook, HookBase
from visionlab.engine.trainer import NonFiniteLossError, evaluate
from visionlab.tasks import ClassificationTask


def test_loss_goes_down() -> None:
    trainer = make_trainer(max_steps=24, batch_size=8)
    losses = []

    class Record(HookBase):
        def after_step(self) -> None:
            losses.append(self.trainer.last_losses["loss_classifier"])

    trainer.register_hook(Record())
    trainer.train()
    assert trainer.step == 24 and trainer.epoch == 6
    assert sum(losses[-4:]) < sum(losses[:4])


def test_gradient_accumulation_matches_the_large_batch() -> None:
    big = make_trainer(batch_size=8, accumulate=1, max_steps=6)
    small = make_trainer(batch_size=4, accumulate=2, max_steps=6)
    big.train()
    small.train()
    assert big.steps_per_epoch == small.steps_per_epoch == 4
    for (name, a), b in zip(big.module.state_dict().items(), small.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert big.last_losses["loss_classifier"] == pytest.approx(
        small.last_losses["loss_classifier"], rel=1e-5
    )


def test_gradient_clipping_bounds_the_update() -> None:
    trainer = make_trainer(max_steps=1)
    trainer.grad_clip = 1e-4
    trainer.scheduler = None
    before = [p.detach().clone() for p in trainer.module.parameters()]
    trainer.optimizer.param_groups[0]["weight_decay"] = 0.0
    for group in trainer.optimizer.param_groups:
        group["lr"], group["weight_decay"] = 1.0, 0.0
    trainer.train()
    step = torch.cat([(p - b).flatten() for p, b in zip(trainer.module.parameters(), before)])
    assert 0 < step.norm() <= 1e-4 * 1.0001  # first SGD step = lr * clipped gradient


def _train_recording_dtypes(amp: str) -> tuple[object, list[torch.dtype]]:
    """Train three steps; the dtypes of the conv's and the linear layer's outputs seen."""
    trainer = make_trainer(max_steps=3, amp=amp)
    seen: list[torch.dtype] = []
    for layer in (trainer.module.conv, trainer.module.fc):
        layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    trainer.train()
    return trainer, seen


def test_bf16_autocast_on_cpu() -> None:
    trainer, seen = _train_recording_dtypes("bf16")
    assert trainer.step == 3
    assert seen == [torch.bfloat16] * 6  # the forward ran under autocast, 3 steps x 2 layers
    assert all(torch.isfinite(p).all() for p in trainer.module.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.module.parameters())  # master weights
    fp32, seen = _train_recording_dtypes("none")
    assert seen == [torch.float32] * 6
    # bf16 rounding shows in the loss; the same seed and data otherwise
    bf16_loss, fp32_loss = (
        trainer.last_losses["loss_classifier"],
        fp32.last_losses["loss_classifier"],
    )
    assert bf16_loss != fp32_loss and bf16_loss == pytest.approx(fp32_loss, rel=0.05)


class _NanAt(ClassificationTask):
    """Cross-entropy plus a box loss that turns NaN at the ``bad_step``-th call."""

    def __init__(self, bad_step: int) -> None:
        super().__init__(name="classification")
        self.bad_step, self.calls = bad_step, 0

    def loss(self, model, images, targets):
        self.calls += 1
        losses = super().loss(model, images, targets)
        bad = float("nan") if self.calls == self.bad_step else 0.0
        losses["loss_box"] = losses["loss_classifier"] * 0 + bad
        return losses


def test_nan_loss_stops_and_last_checkpoint_stays_intact(tmp_path: Path) -> None:
    last = tmp_path / "last.pt"
    saved: list[bytes] = []

    def save(name: str) -> None:
        state = {"model": trainer.module.state_dict(), **trainer.state_dict()}
        save_checkpoint(last, state)
        saved.append(last.read_bytes())

    trainer = make_trainer(max_steps=10, task=_NanAt(bad_step=3))
    trainer.register_hook(CheckpointHook(save, save_every=1))
    with pytest.raises(NonFiniteLossError, match=r"^step 3: loss_box is nan"):
        trainer.train()
    assert trainer.step == 2 and len(saved) == 2
    assert last.read_bytes() == saved[-1]  # nothing written after the bad step
    state = load_checkpoint(last)
    assert state["step"] == 2
    for key, value in trainer.module.state_dict().items():  # the bad step changed nothing
        assert torch.equal(state["model"][key], value)


def test_eval_hook_tracks_the_best_metric() -> None:
    val = build_loader(MemoryDataset(24, seed=1), batch_size=8, shuffle=False, seed=0)
    task = ClassificationTask(name="classification")
    bests: list[int] = []
    trainer = make_trainer(max_steps=12)

    def run_eval() -> dict:
        return evaluate(trainer.module, task, val, task.evaluator(["r", "g", "b"]))

    hook = EvalHook(
        run_eval,
        every=1,
        primary="top1",
        on_best=lambda: bests.append(trainer.step),
        say=lambda _: None,
    )
    trainer.register_hook(hook)
    trainer.train()
    assert trainer.best_metric is not None and trainer.best_metric["name"] == "top1"
    assert bests and bests[-1] == trainer.best_metric["step"]
    assert 0.0 <= trainer.best_metric["value"] <= 1.0
    assert set(hook.last_metrics) >= {"top1", "top5", "per_class"}


def test_stop_at_step_marks_the_run_interrupted() -> None:
    trainer = make_trainer(max_steps=8)
    trainer.stop_at_step = 3
    trainer.train()
    assert trainer.step == 3 and trainer.interrupted


def test_seed_everything_and_deterministic_mode() -> None:
    from visionlab.engine.common import seed_everything

    was = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(7, deterministic=True)
        first = torch.rand(3)
        assert torch.are_deterministic_algorithms_enabled()
        seed_everything(7)
        assert torch.equal(torch.rand(3), first)
    finally:
        torch.use_deterministic_algorithms(was)
