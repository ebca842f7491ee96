"""Checkpoints: atomic save, safe load (``weights_only``), RNG capture, safetensors export.

A checkpoint is plain data only, so ``torch.load(weights_only=True)`` reads it and nothing in
the file can run code (docs/interfaces.md "Runs and checkpoints")::

    {"model": state_dict, "model_name", "model_args", "task", "classes", "predicates",
     "config": dict, "step", "epoch", "optimizer", "scheduler", "scaler", "rng", "sampler",
     "best_metric"}

Writes go to a temporary file in the target's folder, are flushed and fsynced, then renamed
over the target with :func:`os.replace`, so a crash leaves either the old file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionlab.errors import CheckpointError

SIDECAR = "model.json"
WEIGHTS = "model.safetensors"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Any) -> Path:
    """Call ``write(file_object)`` on a temporary file next to ``path``, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return path
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)
    return path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (plain data and tensors only) with :func:`torch.save`."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: missing or unreadable file, or a file that needs arbitrary pickled
            objects (which are refused without running any of them).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a .pt checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        detail_line = detail[0].strip()[:200] if detail else ""
        if "Unsupported global" in text:  # a real pickle that names classes or functions
            raise CheckpointError(
                f"{path}: refused to load: the file needs arbitrary Python objects, which "
                f"weights_only loading does not run ({detail_line})"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint (not a torch.save file, or a damaged one: "
            f"{detail_line or type(err).__name__})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        reason = str(err).strip() or ("empty file" if path.stat().st_size == 0 else "")
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({reason or type(err).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    return state


def require_keys(state: dict[str, Any], path: str | Path, keys: tuple[str, ...]) -> None:
    """Raise CheckpointError naming the first of ``keys`` missing from ``state``."""
    for key in keys:
        if key not in state:
            raise CheckpointError(f"{path}: not a visionlab checkpoint (no {key!r} entry)")


# ------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch CPU and CUDA RNG states as tensors and plain data."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA only when the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# ------------------------------------------------------------------------------ export


def export_safetensors(
    model: nn.Module, out_dir: str | Path, meta: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``out_dir/model.safetensors`` and the ``model.json`` sidecar that rebuilds it.

    ``meta`` holds plain data: ``model_name``, ``model_args``, ``task``, ``classes``,
    ``predicates``, ``input_size``, ``normalize``. Tied weights are written once per name.
    """
    from safetensors.torch import save

    out_dir = Path(out_dir)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    blob = save(tensors, metadata={"format": "pt", "model_name": str(meta.get("model_name"))})
    weights = atomic_write(out_dir / WEIGHTS, lambda f: f.write(blob))
    text = json.dumps({"format": "visionlab-safetensors-v1", **meta}, indent=2)
    sidecar = atomic_write(out_dir / SIDECAR, lambda f: f.write(text.encode("utf-8")))
    return weights, sidecar


def read_export(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an exported folder (or its ``model.safetensors``): ``(sidecar, state_dict)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    sidecar_path, weights_path = folder / SIDECAR, folder / WEIGHTS
    for p in (sidecar_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"{folder}: not an exported model (missing {p.name})")
    try:
        meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{sidecar_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or "model_name" not in meta:
        raise CheckpointError(f"{sidecar_path}: no 'model_name' entry")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({err})") from None
    return meta, state
