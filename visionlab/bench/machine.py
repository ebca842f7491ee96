"""What every benchmark shares: the machine and command header of its Markdown file, the
load average line, table rows, timed calls, and the write."""

from __future__ import annotations

import math
import os
import platform
import shlex
import sys
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any


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


def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def load_line(before: float, after: float) -> str:
    """The sentence that states the load average before and after a benchmark's timings."""
    return (
        f"Load average (1 min) before / after: {before:.1f} / {after:.1f} on "
        f"{os.cpu_count()} logical cores."
    )


def comma_list(text: str, flag: str, kind: type = str, choices: tuple = ()) -> list[Any]:
    """The items of a comma-separated option: ``kind`` (counts: ints, each at least 1) or
    among ``choices``; a VisionLabError names ``flag`` otherwise."""
    from visionlab.errors import VisionLabError

    try:
        items = [kind(t.strip()) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise VisionLabError(
            f"{flag} {text!r}: expected comma-separated {kind.__name__}s"
        ) from None
    bad = [t for t in items if (choices and t not in choices) or (kind is int and t < 1)]
    if bad:
        also = f"; choose from {', '.join(choices)}" if choices else " (counts must be >= 1)"
        raise VisionLabError(f"{flag} {text!r}: {', '.join(map(str, bad))} not allowed{also}")
    return items


def write_markdown(out_dir: str | Path, name: str, text: str | list[str], *also: Path) -> Path:
    """Write ``out_dir/name`` atomically (a list of lines is joined by newlines) and say so,
    naming the pictures ``also`` written beside it."""
    from visionlab.engine.checkpoint import atomic_write

    text = text if isinstance(text, str) else "\n".join(text)
    path = Path(out_dir) / name
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    print("wrote " + " and ".join(str(p) for p in (path, *also)))
    return path


def row(*cells: object) -> str:
    """A Markdown table row of ``cells``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def elapsed_ms(fn: Callable[..., Any], *args: Any) -> float:
    """Milliseconds of one call ``fn(*args)`` (garbage collection off, as ``timeit`` times)."""
    return 1000 * timeit.timeit(partial(fn, *args), number=1)


def take_turns(
    calls: dict[str, Callable[[Any], Any]], inputs: list[Any], runs: int = 1
) -> dict[str, list[float]]:
    """Milliseconds of each call on each input, the calls taking turns input by input (a load
    on the machine then falls on all alike); with ``runs``, each input's fastest of as many."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for x in inputs:
        for name, fn in calls.items():
            times[name].append(min(elapsed_ms(fn, x) for _ in range(runs)))
    return times
