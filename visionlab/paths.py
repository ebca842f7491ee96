"""Where visionlab keeps what it makes for itself (built-in dataset, proposal caches), and how
a command checks an output folder and words a failed read or write in one line."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from visionlab.errors import VisionLabError

# Errors that only a write can give: whatever the path, the command was writing it.
_WRITE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EROFS", "ENOSPC", "EDQUOT", "EEXIST", "EFBIG", "ENOTEMPTY", "EXDEV")
    if hasattr(errno, name)
)


def visionlab_home() -> Path:
    """``$VISIONLAB_HOME``, by default ``~/.cache/visionlab``."""
    return Path(os.environ.get("VISIONLAB_HOME") or "~/.cache/visionlab").expanduser()


def ensure_output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create the folder ``path`` (and its parents) unless it exists, and check that files
    can be created in it, so a command refuses an unwritable output before its long work.

    Args:
        path: the folder a command will write into.
        what: what the folder is, for the message (``"output folder"``, ``"run folder"``).

    Returns:
        ``Path(path)``, user-expanded.

    Raises:
        VisionLabError: one line naming the path and the reason, e.g. ``cannot create output
            folder out/x: out is a file, not a folder`` or ``cannot write in output folder
            /data: Permission denied``.
    """
    folder = Path(path).expanduser()
    for candidate in (folder, *folder.parents):  # the nearest existing entry must be a folder
        if candidate.is_dir():
            break
        if candidate.exists() or candidate.is_symlink():
            reason = (
                "it exists and is not a folder"
                if candidate == folder
                else f"{candidate} is a file, not a folder"
            )
            raise VisionLabError(f"cannot create {what} {folder}: {reason}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VisionLabError(f"cannot create {what} {folder}: {_reason(err)}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".visionlab-write-probe-")
    except OSError as err:
        raise VisionLabError(f"cannot write in {what} {folder}: {_reason(err)}") from None
    os.close(fd)
    os.unlink(probe)
    return folder


def describe_os_error(err: OSError) -> str:
    """``cannot read|write|access PATH: REASON`` for an error about ``err.filename``.

    The verb is ``read`` or ``write`` only where the error tells: a rename's target, an
    error only writes give, a missing file in an existing folder, an unreadable file.
    """
    if err.filename2 is not None:  # rename, link, copy: the target is what failed
        return f"cannot write {os.fsdecode(err.filename2)}: {_reason(err)}"
    path = Path(os.fsdecode(err.filename))
    verb = "access"
    if err.errno in _WRITE_ERRNOS:
        verb = "write"
    elif err.errno == errno.ENOENT:
        verb = "read" if path.parent.is_dir() else "access"
    elif err.errno in (errno.EACCES, errno.EPERM):
        verb = "read" if path.exists() and not os.access(path, os.R_OK) else "write"
    return f"cannot {verb} {path}: {_reason(err)}"


def _reason(err: OSError) -> str:
    return err.strerror or str(err)
