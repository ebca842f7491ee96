"""The machine and command line a benchmark ran on, for the header of its Markdown file."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import UTC, datetime


def machine_description() -> str:
    """One line: CPU model, cores, memory, GPU if any, torch version, date."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    return (
        f"{cpu}, {cores} cores{mem}, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}; {date}"
    )


def command_line() -> str:
    """The command as the user typed it (``visionlab bench ...``)."""
    argv = sys.argv[1:]
    return "visionlab " + shlex.join(argv) if argv else "visionlab"


def header(title: str) -> str:
    """Markdown header every benchmark file starts with."""
    return f"# {title}\n\n- Machine: {machine_description()}\n- Command: `{command_line()}`\n"
