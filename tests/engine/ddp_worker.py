"""Worker of test_distributed.py: a few DDP steps of TinyNet on MemoryDataset.

Run under ``torchrun --nproc_per_node N ddp_worker.py OUT GLOBAL_BATCH STEPS`` (or plainly,
as one process). Rank 0 saves the final weights to ``OUT/weights.pt``; every rank saves the
loss values it logged to ``OUT/losses_<rank>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from engine_standins import MemoryDataset, TinyNet

from visionlab.config import OptimConfig, ScheduleConfig
from visionlab.data.loader import build_loader
from visionlab.engine import distributed
from visionlab.engine.hooks import HookBase
from visionlab.engine.trainer import Trainer, build_optimizer, build_scheduler
from visionlab.tasks import get_task


class _Losses(HookBase):
    def __init__(self) -> None:
        self.values: list[float] = []

    def after_step(self) -> None:
        self.values.append(self.trainer.last_losses["loss_classifier"])


def main(out: Path, global_batch: int, steps: int) -> None:
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu")
    torch.manual_seed(0)
    module = TinyNet()
    model = torch.nn.parallel.DistributedDataParallel(module) if info.enabled else module
    loader = build_loader(
        MemoryDataset(48),
        batch_size=global_batch // info.world_size,
        shuffle=True,
        seed=0,
        distributed=info.enabled,
    )
    optimizer = build_optimizer(module, OptimConfig(lr=0.2, momentum=0.9, weight_decay=1e-3))
    scheduler = build_scheduler(
        optimizer, ScheduleConfig(warmup_steps=2), total_steps=steps, steps_per_epoch=len(loader)
    )
    losses = _Losses()
    trainer = Trainer(
        model,
        get_task("classification"),
        loader,
        optimizer,
        scheduler=scheduler,
        max_steps=steps,
        hooks=[losses],
    )
    trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(losses.values, out / f"losses_{info.rank}.pt")
    if info.is_main:
        torch.save(module.state_dict(), out / "weights.pt")
    distributed.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    # Everything is written and the group destroyed; the interpreter's own exit can still
    # abort in gloo's teardown ("terminate called without an active exception", about 1 run
    # in 7 on this machine, after cleanup), so leave without it.
    sys.stdout.flush()
    os._exit(0)
