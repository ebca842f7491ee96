"""Tiny trained runs for tests that need a model trained by `visionlab train` (a checkpoint in
a run folder, its dataset beside it)."""

from __future__ import annotations

from pathlib import Path

import torch


def train_on_scenes_copy(root: Path, task: str, model: str, model_args: str) -> tuple[Path, Path]:
    """(scenes copy, run directory) of a one-epoch ``model`` for ``task`` on a 4 + 2 image,
    64 px scenes copy under ``root``, trained by `visionlab train` with one thread."""
    from visionlab.cli import main
    from visionlab.data.scenes import render_scenes

    data = render_scenes(root / "sc", n_train=4, n_val=2, size=64, progress=False, workers=0)
    run = root / "run"
    args = [
        "train",
        f"data={data}",
        f"out={run}",
        f"task={task}",
        f"model={model}",
        model_args,
        "image_size=64",
        "train.epochs=1",
        "train.batch_size=2",
        "train.progress=false",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    return data, run
