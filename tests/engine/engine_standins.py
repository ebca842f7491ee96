"""Stand-ins for the engine tests: a tiny batch-norm-free model, an in-memory
classification dataset, and a small image-folder dataset written with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

COLORS = {"blue": (30, 30, 200), "green": (30, 200, 30), "red": (200, 30, 30)}


class TinyNet(nn.Module):
    """Conv -> ReLU -> global pool -> linear: deterministic and without batch statistics."""

    task = "classification"

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.GroupNorm(2, 6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


class MemoryDataset(torch.utils.data.Dataset):
    """``n`` random 8x8 images whose label is the brightest channel (learnable)."""

    task = "classification"

    def __init__(self, n: int = 32, seed: int = 0) -> None:
        self.classes = ["r", "g", "b"]
        self.predicates: list[str] = []
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 8, 8, generator=g)
        self.labels = self.images.mean(dim=(2, 3)).argmax(dim=1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict]:
        # a random flip: the sample's augmentation must come from the seeded RNG
        image = self.images[i].flip(-1) if torch.rand(()) < 0.5 else self.images[i]
        return image, {"labels": self.labels[i], "image_id": i}


def write_folder_dataset(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``root/SPLIT/CLASS/i.png``: 20x24 noisy images of each class's colour."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for name, color in COLORS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.integers(-40, 40, (20, 24, 3))
                pixels = (np.array(color)[None, None] + noise).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def make_trainer(
    *,
    batch_size: int = 8,
    accumulate: int = 1,
    max_steps: int = 4,
    n: int = 32,
    task: object = None,
    amp: str = "none",
    hooks: tuple = (),
    seed: int = 0,
):
    """A Trainer over MemoryDataset and TinyNet with SGD (momentum, weight decay) + cosine."""
    from visionlab.config import OptimConfig, ScheduleConfig
    from visionlab.data.loader import build_loader
    from visionlab.engine.trainer import Trainer, build_optimizer, build_scheduler
    from visionlab.tasks import get_task

    torch.manual_seed(seed)
    model = TinyNet()
    loader = build_loader(MemoryDataset(n), batch_size=batch_size, shuffle=True, seed=seed)
    optimizer = build_optimizer(model, OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-3))
    steps_per_epoch = -(-len(loader) // accumulate)
    scheduler = build_scheduler(
        optimizer,
        ScheduleConfig(name="cosine", warmup_steps=2),
        total_steps=max_steps,
        steps_per_epoch=steps_per_epoch,
    )
    return Trainer(
        model,
        task or get_task("classification"),
        loader,
        optimizer,
        scheduler=scheduler,
        max_steps=max_steps,
        accumulate=accumulate,
        amp=amp,
        hooks=hooks,
    )


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The environment torchrun gives process ``rank`` of a one-node CPU job (one thread),
    with this checkout importable."""
    import os

    root = str(Path(__file__).resolve().parents[2])
    return dict(
        os.environ,
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    )
