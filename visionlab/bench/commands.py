"""`visionlab bench SUITE`: run a benchmark suite and write benchmarks/SUITE.md (+ plots).

Every suite states the machine and the command in its output file and compares against
its peer (torchvision, pycocotools, ...) as ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib

# suite -> module with add_arguments(parser) and run(args) -> int
SUITES: dict[str, str] = {
    "scenes": "visionlab.bench.scenes",
    "ops": "visionlab.bench.ops",
    "transfer": "visionlab.bench.transfer",
    "fcn": "visionlab.bench.fcn",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for name, module_name in SUITES.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--out-dir", default="benchmarks", help="where the Markdown goes")
        module.add_arguments(p)
    sub.add_parser("all", help="run every suite with its defaults")


def run(args: argparse.Namespace) -> int:
    if args.suite == "all":
        status = 0
        for name in SUITES:
            parser = argparse.ArgumentParser(prog=f"visionlab bench {name}")
            parser.add_argument("--out-dir", default=args.out_dir)
            module = importlib.import_module(SUITES[name])
            module.add_arguments(parser)
            status |= int(module.run(parser.parse_args([])) or 0)
        return status
    return int(importlib.import_module(SUITES[args.suite]).run(args) or 0)
