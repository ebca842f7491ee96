"""Training curves from ``metrics.jsonl`` files: loss and metrics against step or epoch, one
panel per key, several runs overlaid (e.g. transfer learning vs training from scratch)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from visionlab.errors import DataError, VisionLabError
from visionlab.viz._common import color_for

# Sparse curves (an evaluation per epoch) are drawn as they are; only dense ones are smoothed.
_MIN_POINTS_TO_SMOOTH = 20

Runs = str | Path | Sequence[str | Path] | Mapping[str, str | Path]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (one JSON object per line; blank lines skipped).
    ``path`` may be the file or a run directory holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise DataError(path, "no such metrics file")
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, f"invalid JSON ({err.msg})", field=f"line {number}") from None
            if not isinstance(record, dict):
                raise DataError(path, "each line must be a JSON object", field=f"line {number}")
            records.append(record)
    return records


def _run_paths(runs: Runs) -> dict[str, Path]:
    if isinstance(runs, Mapping):
        return {str(name): Path(p) for name, p in runs.items()}
    if isinstance(runs, (str, Path)):
        runs = [runs]
    out: dict[str, Path] = {}
    for p in runs:
        p = Path(p)
        name = p.name if p.is_dir() else (p.parent.name or p.stem)
        while name in out:
            name += "'"
        out[name] = p
    return out


def _series(
    records: list[dict[str, Any]], key: str, x: str
) -> tuple[list[float], list[float], str]:
    rows = [r for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if x == "auto":
        x = next((c for c in ("step", "epoch") if rows and all(c in r for r in rows)), "index")
    xs = [float(r[x]) if x != "index" else float(i) for i, r in enumerate(rows)]
    return xs, [float(r[key]) for r in rows], x


def _ema(values: list[float], smooth: float) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else smooth * acc + (1 - smooth) * v
        out.append(acc)
    return out


def plot_curves(
    runs: Runs,
    keys: Sequence[str],
    out_png: str | Path,
    title: str | None = None,
    *,
    x: str = "auto",
    smooth: float = 0.0,
    log_keys: Sequence[str] = (),
) -> Path:
    """Plot ``keys`` from one or more runs' ``metrics.jsonl`` into one PNG, one panel per key.

    Args:
        runs: a ``metrics.jsonl`` path or run directory, a list of them (named after their run
            directory), or ``{legend name: path}``.
        keys: record keys to plot, e.g. ``["loss", "val/mAP"]``; records without a key are
            skipped for that panel.
        x: "step", "epoch", "index" or "auto" (step when every record of the key has one, else
            epoch, else the record's position).
        smooth: exponential moving average factor in [0, 1) for curves of 20 points or more
            (per-step losses); the raw curve is drawn faint behind it.
        log_keys: keys drawn on a log y axis (losses spanning decades).

    Returns:
        ``out_png``.
    """
    # A bare Figure renders with Agg and leaves pyplot's global state (and backend) alone.
    from matplotlib.figure import Figure

    if not keys:
        raise VisionLabError("plot_curves needs at least one key")
    if not 0 <= smooth < 1:
        raise VisionLabError(f"smooth must be in [0, 1), got {smooth}")
    data = {name: (path, read_metrics(path)) for name, path in _run_paths(runs).items()}
    for key in keys:
        if not any(key in r for _, records in data.values() for r in records):
            files = ", ".join(str(p) for p, _ in data.values())
            raise DataError(files, f"no record has the key {key!r}", field=key)
    cols = min(len(keys), 3)
    rows = -(-len(keys) // cols)
    fig = Figure(figsize=(5.2 * cols, 3.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        x_label = x
        for k, (name, (_, records)) in enumerate(data.items()):
            xs, ys, x_label = _series(records, key, x)
            if not xs:
                continue
            color = [c / 255 for c in color_for(k)]
            if smooth > 0 and len(ys) >= _MIN_POINTS_TO_SMOOTH:
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1)
                ys = _ema(ys, smooth)
            ax.plot(
                xs,
                ys,
                color=color,
                linewidth=1.8,
                label=name,
                marker="o" if len(xs) < 30 else None,
                markersize=3,
            )
        ax.set_title(key)
        ax.set_xlabel(x_label)
        if key in log_keys:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if len(data) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png


def plot_grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    out_png: str | Path,
    *,
    ylabel: str,
    title: str = "",
) -> Path:
    """One group of bars per entry of ``groups`` (e.g. object sizes), one bar per series
    (e.g. models), values in [0, 1] drawn as percentages and written above each bar.

    Args:
        groups: labels of the x axis.
        series: name -> one value per group (NaN: no bar).
        out_png: where the PNG goes (parent folders are made).

    Returns:
        ``out_png`` as a Path.
    """
    from matplotlib.figure import Figure

    bad = [name for name, values in series.items() if len(values) != len(groups)]
    if not series or bad:
        raise VisionLabError(
            f"plot_grouped_bars: every series needs {len(groups)} values; wrong: {bad}"
        )
    fig = Figure(figsize=(1.6 + 1.3 * len(groups) * max(1, len(series)) / 2, 4.0))
    ax = fig.subplots()
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [100 * v for v in values]
        color = [c / 255 for c in color_for(k)]
        bars = ax.bar(xs, heights, width=width * 0.95, color=color, label=name)
        ax.bar_label(bars, labels=[f"{h:.0f}" if not math.isnan(h) else "" for h in heights],
                     fontsize=7, padding=1)  # fmt: skip
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylim(0, 108)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(series))
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png
