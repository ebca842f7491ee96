"""`visionlab train CONFIG [key=value ...] [--resume RUN_DIR]`: train a model from a recipe.

The recipe is a YAML file (see :mod:`visionlab.config` for every key); ``key=value``
overrides use dotted keys (``train.epochs=3 optim.lr=0.05 out=runs/quick``). The run lives in
``runs/<name>/`` (or ``out``): the first and the last line printed say where. ``--resume
RUN_DIR`` continues an interrupted run exactly from its ``checkpoints/last.pt`` (the recipe
defaults to the run's own ``config.yaml``). Under ``torchrun --nproc_per_node N -m visionlab
train ...`` the run uses DistributedDataParallel (NCCL on CUDA, Gloo on CPU): each process
takes ``batch_size / N`` of every batch, logged losses are averaged over the processes,
evaluation runs on rank 0 over the whole validation set while the others wait, and only
rank 0 writes the run directory.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "config", nargs="?", help="YAML recipe (optional with --resume: the run's config.yaml)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. train.epochs=3"
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run exactly")


def run(args: argparse.Namespace) -> int:
    from visionlab.engine.api import train

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)  # no recipe: defaults + overrides (or the resumed run's)
        config = None
    train(config, overrides, resume=args.resume)
    return 0
