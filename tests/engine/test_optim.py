"""Optimizer parameter groups and the per-step learning-rate schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from visionlab.config import OptimConfig, ScheduleConfig
from visionlab.engine.trainer import LRSchedule, build_optimizer, build_scheduler


def _lrs(schedule: ScheduleConfig, total: int, steps_per_epoch: int = 1) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, schedule, total_steps=total, steps_per_epoch=steps_per_epoch)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine() -> None:
    lrs = _lrs(ScheduleConfig(name="cosine", warmup_steps=4, warmup_factor=0.2), total=14)
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # linear from 0.2 to 1
    assert lrs[4] == pytest.approx(1.0)
    # cosine over the 10 steps after warm-up: 0.5 * (1 + cos(pi * t / 10))
    assert lrs[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))  # decreasing after warm-up
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))


def test_cosine_floor() -> None:
    fn = LRSchedule("cosine", total_steps=10, min_lr_factor=0.1)
    assert fn(0) == pytest.approx(1.0)
    assert fn(10) == pytest.approx(0.1)
    assert fn(50) == pytest.approx(0.1)  # past the end: stays at the floor


def test_step_schedule_milestones_in_epochs() -> None:
    schedule = ScheduleConfig(name="step", milestones=[2, 3], gamma=0.1, warmup_steps=2)
    lrs = _lrs(schedule, total=8, steps_per_epoch=2)  # milestones at steps 4 and 6
    assert lrs == pytest.approx([0.001, 0.5005, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_constant_schedule() -> None:
    assert _lrs(ScheduleConfig(name="constant"), total=5) == pytest.approx([1.0] * 5)


class _WithBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 2)

    def backbone_parameters(self):
        return self.backbone.parameters()


def test_no_decay_on_norm_and_bias_and_backbone_lr() -> None:
    model = _WithBackbone()
    opt = build_optimizer(
        model, OptimConfig(name="sgd", lr=0.1, weight_decay=0.01, backbone_lr_mult=0.1)
    )
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    conv, bn, fc = model.backbone[0], model.backbone[1], model.fc
    assert by_param[id(conv.weight)] == pytest.approx((0.01, 0.01))
    assert by_param[id(conv.bias)] == pytest.approx((0.01, 0.0))
    assert by_param[id(bn.weight)] == pytest.approx((0.01, 0.0))
    assert by_param[id(fc.weight)] == pytest.approx((0.1, 0.01))
    assert by_param[id(fc.bias)] == pytest.approx((0.1, 0.0))
    assert len(by_param) == len(list(model.parameters()))


def test_sgd_nesterov_and_adamw() -> None:
    model = nn.Linear(2, 2)
    sgd = build_optimizer(model, OptimConfig(name="sgd", momentum=0.8, nesterov=True))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    adamw = build_optimizer(model, OptimConfig(name="adamw", lr=3e-4, betas=[0.8, 0.9]))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.8, 0.9)
