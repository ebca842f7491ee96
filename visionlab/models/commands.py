"""`visionlab models`: list the registered models with their task and a one-line summary.

visionlab models                    # every model, as a table
visionlab models 'resnet*'          # names matching a pattern
visionlab models --task detection   # one task
visionlab models --json             # name, task, summary and builder arguments
"""

from __future__ import annotations

import argparse
import json

from visionlab.errors import VisionLabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern [*]")
    parser.add_argument("--task", help="only models of this task (classification, ...)")
    parser.add_argument(
        "--json", action="store_true", help="print JSON with each builder's arguments"
    )


def run(args: argparse.Namespace) -> int:
    from visionlab.models.registry import did_you_mean, list_models, model_info

    names = list_models(args.pattern)
    if args.task is not None:
        from visionlab.constants import TASKS

        tasks = sorted({*TASKS, *(model_info(n).task for n in list_models())})
        if args.task not in tasks:
            hint = did_you_mean(args.task, tasks)
            raise VisionLabError(
                f"--task {args.task!r}: unknown task{hint}; tasks: {', '.join(tasks)}"
            )
        names = [n for n in names if model_info(n).task == args.task]
    infos = [model_info(n) for n in names]
    if args.json:
        rows = [
            {
                "name": i.name,
                "task": i.task,
                "summary": i.summary,
                "args": i.args,
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2, default=repr))  # repr: a default JSON cannot hold
        return 0
    if not infos:
        print(
            f"no registered model matches {args.pattern!r}"
            + (f" with task {args.task!r}" if args.task else "")
        )
        return 1
    header = ("model", "task", "summary")
    width_name = max(len(header[0]), *(len(i.name) for i in infos))
    width_task = max(len(header[1]), *(len(i.task) for i in infos))
    print(f"{header[0]:<{width_name}}  {header[1]:<{width_task}}  {header[2]}")
    print(f"{'-' * width_name}  {'-' * width_task}  {'-' * len(header[2])}")
    for i in infos:
        print(f"{i.name:<{width_name}}  {i.task:<{width_task}}  {i.summary}")
    return 0
