"""Exact resume: a run stopped mid-epoch and resumed with `--resume` ends bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import train_args

from visionlab.cli import main
from visionlab.engine.checkpoint import load_checkpoint


def test_interrupted_and_resumed_run_is_bit_identical(
    folder_dataset: Path, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "interrupted"
    # stop after step 5 of 12: in the middle of the first epoch (6 steps per epoch)
    assert main(train_args(folder_dataset, out, "train.stop_at_step=5")) == 0
    stopped = load_checkpoint(out / "checkpoints" / "last.pt")
    assert stopped["step"] == 5 and stopped["sampler"]["batch_in_epoch"] == 5
    assert "continue it with `visionlab train --resume" in capsys.readouterr().out

    assert main(["train", "--resume", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads((out / "eval.json").read_text())
    best = record["best"]
    assert record["resumed"] is True  # its train_seconds are only the resumed part
    assert lines[0] == f"run: {out}"
    assert lines[-1].endswith(
        f"run saved in {out} (best top1 {best['value']:.4f} at step {best['step']})"
    )

    full = load_checkpoint(trained_run / "checkpoints" / "last.pt")
    resumed = load_checkpoint(out / "checkpoints" / "last.pt")
    assert resumed["step"] == full["step"] == 12
    for key, value in full["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for a, b in zip(full["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["best_metric"] == full["best_metric"]

    # the log reads as one run: the same evaluations; training records after the resume
    # step match too (the interrupted run also logged its partial window at step 5)
    def records(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    def strip(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "time"}

    ours, theirs = records(out), records(trained_run)
    assert [r["step"] for r in ours if r["type"] == "train"] == [2, 4, 5, 6, 8, 10, 12]
    evals = [strip(r) for r in ours if r["type"] == "eval"]
    assert evals == [strip(r) for r in theirs if r["type"] == "eval"]
    late = [strip(r) for r in ours if r["type"] == "train" and r["step"] > 6]
    assert late == [strip(r) for r in theirs if r["type"] == "train" and r["step"] > 6]


def test_resume_needs_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 1\n")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "Traceback" not in err
