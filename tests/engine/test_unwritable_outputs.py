"""Outputs that cannot be written: `visionlab export` and the CLI's last resort end in one
line naming the path and the reason (exit 2); `visionlab eval` still prints its metrics and
only warns that eval.json could not be written (exit 0)."""

from __future__ import annotations

import errno
import json
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from conftest import train_args

from visionlab.cli import main
from visionlab.models import commands as models_commands

# What the line must give as the reason, per case (the kernel words the first one).
REASONS = {
    "read_only_parent": ("Permission denied", "Operation not permitted", "Read-only file system"),
    "parent_is_a_file": ("not a folder",),
    "output_is_a_file": ("not a folder",),
}


def _one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", tuple(REASONS))
def test_export(
    case: str,
    trained_run: Path,
    unwritable_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("a regular file")
    out, named = {
        "read_only_parent": (unwritable_dir / "export", unwritable_dir / "export"),
        "parent_is_a_file": (blocker / "export", blocker),
        "output_is_a_file": (blocker, blocker),
    }[case]
    ckpt = trained_run / "checkpoints" / "best.pt"
    assert main(["export", str(ckpt), "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert err.startswith("visionlab export: error: ") and str(named) in err, err
    assert any(reason in err for reason in REASONS[case]), err
    assert blocker.read_text() == "a regular file"


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the trained run without its eval.json, so eval writes a new one."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("tb", "eval.json"))
    return run


def _refuse_new_files(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``folder`` refuse new files: mode 0555 where that holds; as root, which ignores
    modes, temporary files there (how eval.json is written) fail as the kernel would."""
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        (folder / ".probe").write_bytes(b"")
    except PermissionError:
        return
    (folder / ".probe").unlink()
    mkstemp = tempfile.mkstemp

    def refusing(*args, **kwargs):
        if Path(kwargs.get("dir") or ".") == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(folder / "tmpXXXX"))
        return mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refusing)


@pytest.mark.parametrize("as_json", [True, False])
def test_eval_in_a_read_only_run_prints_then_warns(
    as_json: bool, run_copy: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_new_files(run_copy, monkeypatch)
    try:
        code = main(["eval", str(run_copy / "checkpoints" / "last.pt"), *["--json"] * as_json])
    finally:
        run_copy.chmod(stat.S_IRWXU)
    assert code == 0
    out, err = capsys.readouterr()
    if as_json:
        assert json.loads(out.strip().splitlines()[-1])["top5"] == 1.0
    else:
        assert "top1" in out and "top5" in out
    warning = err.strip().splitlines()[-1]
    assert warning == f"visionlab eval: warning: could not write {run_copy / 'eval.json'}: " + (
        "Permission denied"
    )
    assert not (run_copy / "eval.json").exists()


def test_eval_when_eval_json_is_a_folder(run_copy: Path, capsys: pytest.CaptureFixture) -> None:
    (run_copy / "eval.json" / "keep").mkdir(parents=True)
    assert main(["eval", str(run_copy / "checkpoints" / "last.pt"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["top5"] == 1.0
    warning = err.strip().splitlines()[-1]
    assert warning.startswith("visionlab eval: warning: could not write ")
    assert str(run_copy / "eval.json") in warning and "Is a directory" in warning
    assert (run_copy / "eval.json" / "keep").is_dir()


def test_train_into_a_read_only_folder_is_one_line(
    folder_dataset: Path, unwritable_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    out = unwritable_dir / "run"
    assert main(train_args(folder_dataset, out)) == 2
    err = _one_line(capsys)
    assert err.startswith("visionlab train: error: ") and str(out) in err, err
    assert any(reason in err for reason in REASONS["read_only_parent"]), err


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/nowhere/out.png"),
            "visionlab models: error: cannot write /nowhere/out.png: Permission denied",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x.json"),
            "visionlab models: error: cannot write /mnt/ro/x.json: Read-only file system",
        ),
        (
            IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp/a.tmp", None, "/tmp/eval.json"),
            "visionlab models: error: cannot write /tmp/eval.json: Is a directory",
        ),
    ],
)
def test_cli_turns_an_os_error_about_a_path_into_one_line(
    error: OSError, line: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(args):
        raise error

    monkeypatch.setattr(models_commands, "run", run)
    assert main(["models"]) == 2
    assert _one_line(capsys) == line


def test_cli_reads_a_missing_file_as_a_read(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.json"
    monkeypatch.setattr(models_commands, "run", lambda args: missing.read_text())
    assert main(["models"]) == 2
    assert _one_line(capsys) == (
        f"visionlab models: error: cannot read {missing}: No such file or directory"
    )


def test_cli_lets_an_os_error_without_a_path_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(models_commands, "run", run)
    with pytest.raises(OSError, match="No space left"):
        main(["models"])
