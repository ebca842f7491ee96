"""Fixtures of the engine tests (stand-ins live in engine_standins.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_standins import write_folder_dataset


@pytest.fixture(scope="session")
def folder_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("colors"), {"train": 8, "val": 3})


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: a second intra-op thread only adds spin-waiting on a loaded machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """`visionlab train` arguments for a 12-step tiny_cnn run on the colour folders."""
    return [
        "train",
        f"data={data}",
        f"out={out}",
        "model=tiny_cnn",
        "model_args.width=4",
        "model_args.dropout=0.2",  # uses the RNG: resume must restore it
        "image_size=16",
        "train.epochs=2",
        "train.batch_size=4",
        "train.log_every=2",
        "train.progress=false",
        "optim.lr=0.05",
        "schedule.warmup_steps=2",
        *extra,
    ]


@pytest.fixture(scope="session")
def trained_run(folder_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 12-step run (2 epochs of 6 steps, evaluated after each)."""
    from visionlab.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(train_args(folder_dataset, out)) == 0
    torch.set_num_threads(threads)
    return out
