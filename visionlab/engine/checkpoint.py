"""Checkpoints: atomic save, safe load (``weights_only``), RNG capture, safetensors export.

A checkpoint is plain data only, so ``torch.load(weights_only=True)`` reads it and nothing in
the file can run code (docs/interfaces.md "Runs and checkpoints")::

    {"model": state_dict, "model_name", "model_args", "task", "classes", "predicates",
     "config": dict, "step", "epoch", "optimizer", "scheduler", "scaler", "rng", "sampler",
     "best_metric"}

Every write is atomic (:func:`atomic_write`): a crash leaves the old file or the new one.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import io
import json
import mmap
import os
import pickle
import pickletools
import random
import tempfile
import zipfile
from collections import deque
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
    with contextlib.suppress(OSError):  # make the rename itself durable, where one can
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (plain data and tensors only) with :func:`torch.save`."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: missing or unreadable file, or a file whose pickle asks to run code
            (classes or functions other than torch's tensor data): refused, with their names,
            and nothing in it runs.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a .pt checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        code = [name for name in _pickled_globals(path) or [] if name not in _loadable_globals()]
        if code:  # a real pickle that names classes or functions to call
            code = list(dict.fromkeys(code))
            named = ", ".join(code[:4]) + (", ..." if len(code) > 4 else "")
            raise CheckpointError(
                f"{path}: refused to load: the file asks to run code when loaded ({named}); "
                "nothing in it ran. Do not load it with torch.load(weights_only=False) "
                "unless you trust its source"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint (not a torch.save file, or a damaged one: "
            f"{_unpickling_reason(str(err)) or type(err).__name__})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        reason = str(err).strip() or ("empty file" if path.stat().st_size == 0 else "")
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({reason or type(err).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    return state


def _loadable_globals() -> set[str]:
    """The ``module.name`` globals ``torch.load(weights_only=True)`` accepts (tensors,
    storages, dtypes, ...): the set ``torch.serialization.get_unsafe_globals_in_checkpoint``
    compares against, which reads zip files at protocol 2 only, hence our own reader."""
    from torch import _weights_only_unpickler as weights_only

    return {*weights_only._get_allowed_globals(), *weights_only._get_user_allowed_globals()}


_STRING_OPS = frozenset(  # the opcodes that push a str
    op.name
    for op in pickletools.opcodes
    if op.stack_after in ([pickletools.pyunicode], [pickletools.pybytes_or_str])
)
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _pickled_globals(path: Path) -> list[str] | None:
    """The ``module.name`` of every class or function the file's pickle would look up,
    from its opcodes alone: ``*/data.pkl`` of a torch zip file, else the file itself (a
    plain pickle, or torch's legacy format: pickles, then raw tensor bytes). None when the
    first pickle does not parse through to its STOP (damaged or not a pickle)."""
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                # an mmap, not the file: a length field claiming terabytes reads what is there
                return _globals_of_pickles(m, len(m))
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            data = archive.read(member) if member is not None else b""
    except (OSError, ValueError, zipfile.BadZipFile, RuntimeError):  # ValueError: empty file
        return None
    return _globals_of_pickles(io.BytesIO(data), len(data))


def _globals_of_pickles(stream: Any, size: int) -> list[str] | None:
    names: list[str] = []
    parsed_one = False
    while stream.tell() < size:
        try:
            names += _globals_of_one_pickle(stream)
        except (ValueError, EOFError, KeyError, IndexError, TypeError, UnicodeDecodeError):
            break  # past the last pickle (legacy raw tensor bytes) or a damaged one
        parsed_one = True
    return names if parsed_one else None


def _globals_of_one_pickle(stream: Any) -> list[str]:
    """GLOBAL / INST name their target; STACK_GLOBAL takes the two strings pushed before it
    (directly or from the memo), so strings and the memo are followed; other values are not."""
    names: list[str] = []
    strings: deque[str | None] = deque([None, None], maxlen=2)  # the last two string pushes
    memo: dict[int, object] = {}
    last: object = None  # the value the previous opcode pushed, when it was a string
    for op, arg, _ in pickletools.genops(stream):
        if op.name in ("GLOBAL", "INST"):
            names.append(_global_name(*str(arg).split(" ", 1)))
        elif op.name == "STACK_GLOBAL":
            module, name = strings
            names.append(_global_name(module or "?", name or "?"))
        if op.name == "MEMOIZE":
            memo[len(memo)] = last
        elif op.name in _PUT_OPS:
            memo[arg] = last
        elif op.name in _STRING_OPS or op.name in _GET_OPS:
            last = arg if op.name in _STRING_OPS else memo.get(arg)
            strings.append(last if isinstance(last, str) else None)
        else:
            last = None
    return names


def _global_name(module: str, name: str = "?") -> str:
    """``module.name`` under its Python 3 spelling (protocol 2 writes ``__builtin__.set``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _unpickling_reason(text: str) -> str:
    """The unpickler's own reason from torch's weights_only message, without torch's advice
    (``weights_only=False``, allowlisting): the first line that does not give it, cut there."""
    text = text.split("WeightsUnpickler error:", 1)[-1]
    for line in text.splitlines():
        line = line.strip().removeprefix("Weights only load failed.").strip()
        if line and "weights_only" not in line and not line.startswith("Check the documentation"):
            return line.split(" Please use", 1)[0][:200]
    return ""


def require_keys(state: dict[str, Any], path: str | Path, keys: tuple[str, ...]) -> None:
    """Raise CheckpointError naming the first of ``keys`` missing from ``state``."""
    for key in keys:
        if key not in state:
            raise CheckpointError(f"{path}: not a visionlab checkpoint (no {key!r} entry)")


# ------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch CPU and CUDA RNG states as tensors and plain data."""
    np_state = np.random.get_state(legacy=False)
    return {
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
