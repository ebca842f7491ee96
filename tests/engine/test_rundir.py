"""Nothing lost: a run never destroys an earlier one, one run per folder, resume checks the
recipe, Ctrl-C / SIGTERM save before stopping (visionlab.engine.rundir, interrupt)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import train_args

from visionlab.cli import main
from visionlab.engine.checkpoint import load_checkpoint
from visionlab.engine.rundir import RunLock


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def finished(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of a finished run (checkpoints, logs, eval.json) to try things on."""
    import shutil

    out = tmp_path / "finished"
    shutil.copytree(trained_run, out)
    return out


def test_a_second_run_into_the_default_folder_gets_a_fresh_suffix(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a for a in train_args(folder_dataset, tmp_path) if not a.startswith("out=")]
    args += ["name=shapes", "train.epochs=1"]
    assert main(args) == 0
    first = tmp_path / "runs" / "shapes"
    before = _digest(first)
    assert "checkpoints/best.pt" in before
    capsys.readouterr()

    assert main(args) == 0
    out = capsys.readouterr().out
    second = tmp_path / "runs" / "shapes-2"
    assert (
        f"note: runs/shapes holds an earlier run; this one goes to {Path('runs/shapes-2')}" in out
    )
    assert (second / "checkpoints" / "best.pt").is_file()
    assert _digest(first) == before  # untouched
    saved = load_checkpoint(second / "checkpoints" / "last.pt")
    assert saved["config"]["out"] == str(Path("runs/shapes-2"))


def test_a_fresh_run_into_an_explicit_out_holding_checkpoints_is_refused(
    folder_dataset: Path, finished: Path, capsys
) -> None:
    before = _digest(finished)
    assert main(train_args(folder_dataset, finished)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "holds an earlier run's checkpoints" in line
    assert "--resume" in line and "--overwrite" in line and "out=" in line
    assert _digest(finished) == before


def test_overwrite_keeps_the_old_run_until_the_new_one_saved(
    folder_dataset: Path, finished: Path, capsys
) -> None:
    before = _digest(finished)
    from visionlab.engine.api import train
    from visionlab.engine.hooks import HookBase

    class Fail(HookBase):
        def before_train(self) -> None:
            assert (finished / ".overwritten" / "checkpoints" / "best.pt").is_file()
            raise RuntimeError("the new run fails before its first checkpoint")

    overrides = train_args(folder_dataset, finished)[1:]
    with pytest.raises(RuntimeError, match="fails before"):
        train(None, overrides, overwrite=True, hooks=[Fail()])
    assert _digest(finished) == before  # restored, byte for byte
    assert not (finished / ".overwritten").exists()
    assert "holds the earlier run again" in capsys.readouterr().out

    assert main([*train_args(folder_dataset, finished, "train.epochs=1"), "--overwrite"]) == 0
    assert not (finished / ".overwritten").exists()
    assert load_checkpoint(finished / "checkpoints" / "last.pt")["step"] == 6  # the new run


def test_an_overwrite_killed_before_its_first_checkpoint_is_undone_next_time(
    folder_dataset: Path, finished: Path, capsys
) -> None:
    before = _digest(finished)
    aside = finished / ".overwritten"
    aside.mkdir()
    for entry in finished.iterdir():  # what --overwrite moved before it was killed
        if entry != aside:
            entry.rename(aside / entry.name)
    (finished / "metrics.jsonl").write_text('{"type": "train", "step": 1}\n')  # the new run's
    assert main(train_args(folder_dataset, finished)) == 2  # the old run is back: refused
    assert "restored the run an unfinished --overwrite had moved aside" in capsys.readouterr().out
    assert _digest(finished) == before


def test_a_user_file_in_out_is_never_touched(folder_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "metrics.jsonl").write_text("{}\n")  # a run's log without checkpoints: ours
    assert main(train_args(folder_dataset, out, "train.epochs=1")) == 0
    assert main([*train_args(folder_dataset, out, "train.epochs=1"), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "my notes"


def test_a_live_run_holds_its_folder(folder_dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    lock = RunLock(out)
    lock.acquire(print)  # another run, alive
    try:
        assert main(train_args(folder_dataset, out)) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"{out} is in use by another run (pid {os.getpid()} on " in line
        assert not (out / "checkpoints").exists()
    finally:
        lock.release()
    assert not (out / ".lock").exists()


def test_a_stale_lock_is_taken_over_with_a_warning(
    folder_dataset: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "stale"
    (out / "checkpoints").mkdir(parents=True)
    owner = {"pid": 999999, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00"}
    (out / ".lock").write_text(json.dumps(owner))  # a killed run's: nobody holds the flock
    leftover = out / "checkpoints" / ".last.pt.k1ll3d.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert main(train_args(folder_dataset, out, "train.epochs=1")) == 0
    text = capsys.readouterr().out
    assert "warning: taking over the stale lock" in text and "pid 999999 on elsewhere" in text
    assert "removed 1 temporary file(s)" in text
    assert not leftover.exists() and not (out / ".lock").exists()


def test_resume_applies_and_records_changed_settings(
    folder_dataset: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert main(train_args(folder_dataset, out, "train.stop_at_step=3")) == 0
    original = (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "optim.lr=0.02", "train.epochs=3"]) == 0
    text = capsys.readouterr().out
    assert "warning: resumed with changed settings:" in text
    assert "optim.lr 0.05 -> 0.02" in text and "train.epochs 2 -> 3" in text
    assert (out / "config.yaml").read_text() == original  # the recipe the run started with
    (entry,) = [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]
    assert entry["step"] == 3
    assert entry["changes"]["optim.lr"] == {"old": 0.05, "new": 0.02}
    assert entry["changes"]["train.epochs"] == {"old": 2, "new": 3}
    saved = load_checkpoint(out / "checkpoints" / "last.pt")
    assert saved["step"] == 18 and saved["config"]["optim"]["lr"] == 0.02


def test_resume_refuses_a_change_of_what_is_trained(
    folder_dataset: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert main(train_args(folder_dataset, out, "train.stop_at_step=2")) == 0
    before = _digest(out)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "model_args.width=8", "image_size=24"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "model_args.width: 4 -> 8" in line and "image_size: 16 -> 24" in line
    assert _digest(out) == before


def test_resume_refuses_other_classes_in_one_line(
    folder_dataset: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder_dataset, data)
    out = tmp_path / "run"
    assert main(train_args(data, out, "train.stop_at_step=2")) == 0
    for split in ("train", "val"):  # the user adds a class to the same folder
        first = sorted(p for p in (data / split).iterdir() if p.is_dir())[0]
        shutil.copytree(first, data / split / "zz_new_class")
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "cannot resume on other classes" in line and "zz_new_class" in line


def test_train_into_an_unwritable_folder_is_one_line(
    folder_dataset: Path, tmp_path: Path, unwritable_dir: Path, capsys
) -> None:
    assert main(train_args(folder_dataset, unwritable_dir / "run")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot write the run folder {unwritable_dir / 'run'}" in line
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(train_args(folder_dataset, a_file / "run")) == 2
    assert "cannot write the run folder" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_step_then_stops(
    folder_dataset: Path, tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    out = tmp_path / "run"
    args = train_args(folder_dataset, out, "train.epochs=2000", "train.log_every=1")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "visionlab", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == status, output
    assert "Traceback" not in output
    saved = load_checkpoint(out / "checkpoints" / "last.pt")
    assert 3 <= saved["step"] < 2000 * 6
    assert f"stopped at step {saved['step']} by {sig.name}: run saved in {out}" in output
    assert not (out / ".lock").exists()
    before = saved["model"]
    assert (
        main(
            [
                "train",
                "--resume",
                str(out),
                "train.epochs=1",
                "train.max_steps=" + str(saved["step"] + 1),
            ]
        )
        == 0
    )
    after = load_checkpoint(out / "checkpoints" / "last.pt")
    assert after["step"] == saved["step"] + 1
    assert any(not torch.equal(after["model"][k], v) for k, v in before.items())


def test_overwrite_may_come_before_the_overrides(folder_dataset: Path, finished: Path) -> None:
    args = train_args(folder_dataset, finished, "train.epochs=1")
    assert main([args[0], "--overwrite", *args[1:]]) == 0  # as `make demo` calls it
    assert load_checkpoint(finished / "checkpoints" / "last.pt")["step"] == 6
