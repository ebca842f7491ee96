"""The `visionlab` command: data | train | eval | predict | export | models | bench | app | demo.

Each sub-command lives in its own module, imported only when it runs, so `visionlab --help`
stays fast. A command module provides ``add_arguments(parser)`` and ``run(args) -> int``.
Errors caused by user input (:class:`visionlab.errors.VisionLabError`) print as one line
naming the file and field, with exit code 2; they never show a traceback. Nor does a path
a command cannot read or write (an ``OSError`` with a ``filename``): ``cannot write PATH:
REASON``, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from visionlab.errors import VisionLabError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("visionlab.data.commands", "render, convert, check and draw datasets"),
    "train": ("visionlab.engine.commands_train", "train a model from a YAML recipe"),
    "eval": ("visionlab.engine.commands_eval", "evaluate a checkpoint, or a COCO results file"),
    "predict": ("visionlab.engine.commands_predict", "predict images and draw the results"),
    "explain": ("visionlab.explain.commands", "pictures of each step inside a model, index.html"),
    "export": ("visionlab.engine.commands_export", "export a checkpoint (safetensors, ONNX, .pt2)"),
    "models": ("visionlab.models.commands", "list the registered models"),
    "bench": ("visionlab.bench.commands", "run benchmark suites, write benchmarks/*.md"),
    "app": ("visionlab.app.commands", "a web page to try trained models in a browser"),
    "demo": ("visionlab.demo", "the main job on the built-in scenes dataset"),
}
# `visionlab eval detections --gt ... --dt ...` scores a COCO results file.
SUBROUTES: dict[tuple[str, str], str] = {
    ("eval", "detections"): "visionlab.eval.commands",
}


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: visionlab COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {helptext}" for name, (_, helptext) in COMMANDS.items()]
    lines += ["", "`visionlab COMMAND --help` shows the arguments of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_top_help())
        return 0
    if argv[0] in {"-V", "--version"}:
        from visionlab import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"visionlab: unknown command {name!r}{hint}\n\n{_top_help()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    prog = f"visionlab {name}"
    if rest and (name, rest[0]) in SUBROUTES:
        module_name = SUBROUTES[(name, rest[0])]
        prog = f"visionlab {name} {rest[0]}"
        rest = rest[1:]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=prog, description=module.__doc__)
    module.add_arguments(parser)
    # options may come between positional arguments (`train RECIPE --overwrite k=v`), except
    # in a command with sub-commands (`data`), which argparse cannot parse that way
    try:
        args = parser.parse_intermixed_args(rest)
    except TypeError:
        args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except VisionLabError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line, not one per process
            print(f"visionlab {name}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # Last resort for a path a command could not read or write (permissions, a file
        # where a folder should be, a read-only or full disk): one line, not a traceback.
        # An OSError about no path is a bug or the system's, and keeps its traceback.
        if err.filename is None:
            raise
        from visionlab.paths import describe_os_error

        if os.environ.get("RANK", "0") == "0":
            print(f"visionlab {name}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"visionlab {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
