"""`visionlab train CONFIG [key=value ...] [--resume RUN_DIR | --overwrite]`: train a model.

The recipe is a YAML file (see :mod:`visionlab.config` for every key); ``key=value``
overrides use dotted keys (``train.epochs=3 optim.lr=0.05 out=runs/quick``). The run lives in
``runs/<name>/`` (or ``out``): the first and the last line printed say where. A run never
replaces an earlier one: when ``runs/<name>`` holds checkpoints the run goes to
``runs/<name>-2`` (``-3``, ...); an ``out`` holding checkpoints is refused unless
``--overwrite`` is given (the old files are kept aside until the new run's first checkpoint).
One run at a time per folder (``RUN/.lock`` names its owner).

``--resume RUN_DIR`` continues an interrupted run exactly from its ``checkpoints/last.pt``
(the recipe defaults to the one stored there): changing what is trained (model, model_args,
classes, data, image size) is refused; other changes (epochs, lr, batch size, ...) are
applied with a warning and recorded in ``RUN/resumes.jsonl``. Ctrl-C or SIGTERM stop after
the step in progress with ``last.pt`` saved (exit status 130 / 143).

Under ``torchrun --nproc_per_node N -m visionlab train ...`` the run uses
DistributedDataParallel (NCCL on CUDA, Gloo on CPU): each process takes ``batch_size / N``
of every batch, logged losses are averaged over the processes, evaluation runs on rank 0
over the whole validation set while the others wait, and only rank 0 writes the run
directory. R-CNN and SPPNet train their stages in one process (rank 0; the others exit).
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
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in out= (kept aside until this run saves its first checkpoint)",
    )


def run(args: argparse.Namespace) -> int:
    from visionlab.engine.api import train
    from visionlab.engine.interrupt import EXIT_STATUS

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)  # no recipe: defaults + overrides (or the resumed run's)
        config = None
    result = train(config, overrides, resume=args.resume, overwrite=args.overwrite)
    return EXIT_STATUS.get(result.stop_signal or "", 0)
