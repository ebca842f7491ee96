"""Run folders that never lose a run: which folder a run gets (:func:`choose_run_dir`),
one run per folder (:class:`RunLock`), and what a resumed run may change
(:func:`resume_changes`). Only the main process touches the folder.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visionlab.engine.logging import to_plain
from visionlab.errors import ConfigError, VisionLabError

CHECKPOINT_DIR = "checkpoints"
CACHE_DIR = "cache"
LOCK_NAME = ".lock"
ASIDE_NAME = ".overwritten"
RESUME_LOG = "resumes.jsonl"
# What a run writes in its folder: only these are ever moved aside or replaced, so a user's
# own files in a folder named by out= stay where they are.
RUN_ENTRIES = (
    "config.yaml",
    "metrics.jsonl",
    "eval.json",
    "curves.png",
    RESUME_LOG,
    CHECKPOINT_DIR,
    "tb",
    CACHE_DIR,
    "predictions",
)
# Recipe keys that define what is trained: a resumed run may not change them.
TRAINED_KEYS = ("task", "model", "model_args", "data", "train_split", "image_size")
# Keys that name the run or its initial weights: they mean nothing once a run has started.
UNCOMPARED_KEYS = (
    "name",
    "out",
    "transfer.pretrained",
    "model_args.pretrained",
    "model_args.pretrained_backbone",
)


def holds_checkpoints(folder: Path) -> bool:
    """Whether ``folder`` holds a run's checkpoints (``checkpoints/*.pt``)."""
    ckpt_dir = folder / CHECKPOINT_DIR
    return ckpt_dir.is_dir() and any(ckpt_dir.glob("*.pt"))


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _command() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def _write_error(path: Path, err: OSError) -> VisionLabError:
    return VisionLabError(f"cannot write the run folder {path}: {err.strerror or err}")


# ------------------------------------------------------------------------------ lock


class RunLock:
    """``RUN/.lock``: owned by one live process at a time (an ``flock`` on the file).

    The file records ``{"pid", "host", "started", "command"}`` of its owner, so a refused
    run can name it; the operating system drops the ``flock`` when the owner dies, so a
    killed run's lock is taken over (with a warning) instead of blocking the folder forever.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, warn: Callable[[str], None]) -> None:
        """Take the lock or raise :class:`ConfigError` naming the live owner."""
        import fcntl

        for _ in range(3):  # the file may be replaced between open and lock: retry
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise _write_error(self.path.parent, err) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = self._read(fd)
                os.close(fd)
                raise ConfigError(
                    f"{self.path.parent} is in use by another run ({_describe(owner)}); wait "
                    "for it to finish or give this run another out="
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed while we opened it
                os.close(fd)
                continue
            owner = self._read(fd)
            if owner.get("pid") not in (None, os.getpid()):
                warn(f"warning: taking over the stale lock {self.path} ({_describe(owner)})")
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": _now(),
                "command": _command(),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
            self._fd = fd
            return
        raise ConfigError(f"{self.path}: could not take the lock (another run keeps replacing it)")

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
        except (ValueError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "owner unknown"
    parts = [f"pid {owner.get('pid')} on {owner.get('host')}"]
    if owner.get("started"):
        parts.append(f"since {owner['started']}")
    if owner.get("command"):
        parts.append(f"`{owner['command']}`")
    return ", ".join(parts)


def is_locked(run_dir: Path) -> bool:
    """Whether a live run holds ``run_dir``'s lock (nothing is changed)."""
    import fcntl

    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


# ----------------------------------------------------------------------------- aside


class Aside:
    """``--overwrite``: the old run's files wait in ``RUN/.overwritten/`` until the new run
    has saved a checkpoint (:meth:`discard`), or go back if it fails first (:meth:`restore`)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / ASIDE_NAME

    def move(self) -> None:
        """Move every entry of the run folder aside."""
        self.folder.mkdir()
        for entry in _run_entries(self.run_dir):
            entry.rename(self.folder / entry.name)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def restore(self) -> None:
        """Put the old run back, removing what the new run wrote before its first checkpoint."""
        _remove(_run_entries(self.run_dir))
        for entry in self.folder.iterdir():
            entry.rename(self.run_dir / entry.name)
        self.folder.rmdir()


# ---------------------------------------------------------------------------- folder


class RunFolder:
    """The folder of one run, held by the main process from start to end.

    Use :func:`open_run_folder`; call :meth:`checkpoint_saved` after each checkpoint write
    and :meth:`close` at the end (``ok=False`` after a failure).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = RunLock(path)
        self.aside: Aside | None = None

    def checkpoint_saved(self) -> None:
        """The new run has a checkpoint: an overwritten run's files can go."""
        if self.aside is not None:
            self.aside.discard()
            self.aside = None

    def close(self, *, ok: bool) -> None:
        if self.aside is not None and not ok:
            self.aside.restore()
            print(f"note: the new run saved no checkpoint; {self.path} holds the earlier run again")
            self.aside = None
        self.lock.release()

    def record_resume(self, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
        """Append a resume entry (step, time, command, changed keys old -> new)."""
        entry = {
            "time": _now(),
            "step": step,
            "command": _command(),
            "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()},
        }
        with (self.path / RESUME_LOG).open("a", encoding="utf-8") as f:
            f.write(json.dumps(to_plain(entry)) + "\n")


def _run_entries(run_dir: Path) -> list[Path]:
    return [run_dir / name for name in RUN_ENTRIES if (run_dir / name).exists()]


def _remove(entries: list[Path]) -> None:
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _clean_temporaries(run_dir: Path) -> int:
    """Remove ``.NAME.*.tmp`` files that a killed atomic write left (we hold the lock)."""
    removed = 0
    for folder in (run_dir, run_dir / CHECKPOINT_DIR, run_dir / CACHE_DIR):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed += 1
    return removed


def _fresh_default(run_dir: Path) -> Path:
    """``runs/NAME`` or the first of ``runs/NAME-2``, ``-3``, ... holding no run."""
    candidate, n = run_dir, 1
    while holds_checkpoints(candidate) or is_locked(candidate) or (candidate / ASIDE_NAME).is_dir():
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
    return candidate


def choose_run_dir(cfg: Any, *, resume: bool, overwrite: bool) -> tuple[Path, str | None]:
    """The folder a run writes to, and a note when it is not the one asked for.

    Raises:
        ConfigError: a fresh run into an explicit ``out=`` that holds checkpoints, without
            ``overwrite``.
    """
    run_dir = cfg.run_dir()
    if resume or overwrite:
        return run_dir, None
    if not cfg.out:
        fresh = _fresh_default(run_dir)
        note = f"{run_dir} holds an earlier run; this one goes to {fresh}"
        return fresh, note if fresh != run_dir else None
    if holds_checkpoints(run_dir):
        raise _refusal(run_dir)
    return run_dir, None


def _refusal(run_dir: Path) -> ConfigError:
    return ConfigError(
        f"{run_dir} holds an earlier run's checkpoints; continue it with `visionlab train "
        f"--resume {run_dir}`, give another out=, or replace it with --overwrite"
    )


def open_run_folder(
    cfg: Any, *, resume: bool, overwrite: bool, is_main: bool, say: Callable[[str], None] = print
) -> RunFolder:
    """Choose, create and lock the run folder (main process); set ``cfg.out`` to it.

    The others receive the main process's choice (or its error) and hold nothing.
    """
    from visionlab.engine import distributed

    decision: tuple[str, str | None] | str = ""
    if is_main:
        try:
            path, note = choose_run_dir(cfg, resume=resume, overwrite=overwrite)
            decision = (str(path), note)
        except VisionLabError as err:
            decision = str(err)
    decision = distributed.broadcast_object(decision)
    if isinstance(decision, str):
        raise ConfigError(decision) if is_main else VisionLabError(decision)
    path, note = Path(decision[0]), decision[1]
    cfg.out = str(path)
    folder = RunFolder(path)
    if not is_main:
        return folder
    if note:
        say(f"note: {note}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(path, err) from None
    folder.lock.acquire(say)
    try:
        _settle(folder, resume=resume, overwrite=overwrite, say=say)
    except BaseException:
        folder.lock.release()
        raise
    return folder


def _settle(
    folder: RunFolder, *, resume: bool, overwrite: bool, say: Callable[[str], None]
) -> None:
    """Under the lock: finish an interrupted overwrite, clean temporaries, move aside."""
    path = folder.path
    aside = Aside(path)
    if aside.folder.is_dir():
        if holds_checkpoints(path):  # the new run got as far as a checkpoint: the old can go
            aside.discard()
        else:
            aside.restore()
            say(f"note: {path}: restored the run an unfinished --overwrite had moved aside")
    removed = _clean_temporaries(path)
    if removed:
        say(f"note: removed {removed} temporary file(s) a killed run left in {path}")
    if resume:  # api.train has read its last.pt
        return
    if holds_checkpoints(path):  # e.g. the run an unfinished --overwrite had moved aside
        if not overwrite:
            raise _refusal(path)
        aside.move()
        folder.aside = aside
        say(f"note: --overwrite: the earlier run in {path} is kept aside until this one saves")
        return
    stale = _run_entries(path)
    if stale:  # logs of a run that never saved a checkpoint: ours to replace
        say(f"note: {path} held logs of a run without checkpoints; starting over there")
        _remove(stale)


# ---------------------------------------------------------------------------- resume


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            nested = _flatten(value, f"{prefix}{key}.")
            out.update(nested if nested else {f"{prefix}{key}": {}})
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_trained_key(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in TRAINED_KEYS)


def resume_changes(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The keys a resumed run's recipe ``new`` changes from the checkpoint's ``stored`` (both
    ``Config.to_dict()``), as ``{key: (old, new)}``.

    Raises:
        ConfigError: a change in what is trained (:data:`TRAINED_KEYS`), naming every such
            key with its old and new value.
    """
    old_flat, new_flat = _flatten(stored), _flatten(new)
    keys = [k for k in dict.fromkeys([*old_flat, *new_flat]) if k not in UNCOMPARED_KEYS]
    missing = object()
    pairs = {k: (old_flat.get(k, missing), new_flat.get(k, missing)) for k in keys}
    changes = {
        k: (None if o is missing else o, None if n is missing else n)
        for k, (o, n) in pairs.items()
        if o != n
    }
    refused = {k: v for k, v in changes.items() if _is_trained_key(k)}
    if refused:
        listed = "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in refused.items())
        raise ConfigError(
            f"--resume cannot change what the run trains ({listed}); start a new run instead"
        )
    return changes
