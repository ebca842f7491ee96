"""`visionlab bench SUITE`: run a benchmark suite and write benchmarks/SUITE.md (+ plots).

Every suite states the machine and the command in its output file and compares against
its peer (torchvision, pycocotools, ...) as ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib

# suite -> (module with add_arguments(parser) and run(args) -> int, one-line help).
# Modules are imported only when their suite runs, so one suite's heavy imports never slow
# (or break) another.
SUITES: dict[str, tuple[str, str]] = {
    "scenes": ("visionlab.bench.scenes", "scenes rendering speed (images/s)"),
    "ops": ("visionlab.bench.ops", "ops and COCO evaluation against torchvision/pycocotools"),
    "transfer": ("visionlab.bench.transfer", "transfer learning against training from scratch"),
    "fcn": ("visionlab.bench.fcn", "FCN-32s/16s/8s, deconv vs bilinear, vs torchvision"),
    "rcnn": ("visionlab.bench.rcnn", "R-CNN vs SPPNet: mAP +- box regression, test time split"),
    "yolo": ("visionlab.bench.yolo", "YOLO v1 vs anchors vs our Faster R-CNN: AP, ms/image"),
    "peers": ("visionlab.bench.peers", "Faster R-CNN vs torchvision; Fast/Faster test-time split"),
    "mask": ("visionlab.bench.mask", "Mask R-CNN vs torchvision; Table 2b/2c; masks vs boxes"),
    "relations": ("visionlab.bench.relations", "relations: frequency baseline, feature ablation"),
    "predict": ("visionlab.bench.predict", "prediction images/s: eager vs onnxruntime vs .pt2"),
    "lineage": ("visionlab.bench.lineage", "R-CNN to YOLO on one split: AP, time split, claims"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=[*SUITES, "all"], help="which suite to run")
    parser.add_argument("--out-dir", default="benchmarks", help="where the Markdown goes")
    parser.add_argument(
        "rest", nargs=argparse.REMAINDER, help="suite options (see `visionlab bench SUITE -h`)"
    )
    parser.epilog = "suites:\n" + "\n".join(f"  {k:<9} {h}" for k, (_, h) in SUITES.items())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _run_suite(name: str, argv: list[str], out_dir: str) -> int:
    module = importlib.import_module(SUITES[name][0])
    parser = argparse.ArgumentParser(prog=f"visionlab bench {name}", description=module.__doc__)
    parser.add_argument("--out-dir", default=out_dir, help="where the Markdown goes")
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv)) or 0)


def run(args: argparse.Namespace) -> int:
    if args.suite == "all":
        status = 0
        for name in SUITES:
            status |= _run_suite(name, [], args.out_dir)
        return status
    return _run_suite(args.suite, list(args.rest), args.out_dir)
