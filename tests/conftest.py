"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


def _refuses_writes(folder: Path) -> bool:
    """Whether creating a file in ``folder`` really fails for this process."""
    probe = folder / ".visionlab_write_probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return True
    probe.unlink()
    return False


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards: on tiny tensors threads gain
    little, and on a busy 2-core machine two threads per process oversubscribe it (~10x
    slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def unwritable_dir(tmp_path: Path):
    """A folder this process cannot create files in.

    A folder made read-only (mode 0555) where that holds; as root, which ignores modes (CI
    runs as root), a folder of a read-only file system such as ``/sys``. Every candidate
    is probed with a real write first, so a test using it cannot pass vacuously; the test
    is skipped only where no candidate refuses writes.
    """
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        if _refuses_writes(folder):
            yield folder
            return
        for candidate in (Path("/sys/fs"), Path("/sys"), Path("/proc/sys")):
            if candidate.is_dir() and os.access(candidate, os.R_OK) and _refuses_writes(candidate):
                yield candidate
                return
        pytest.skip("no folder refuses writes to this process")
    finally:
        folder.chmod(stat.S_IRWXU)
