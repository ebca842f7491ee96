"""Two CPU processes (Gloo, launched with torchrun's environment variables) train like one
process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import main as run_worker
from engine_standins import free_port, rank_env

WORKER = Path(__file__).parent / "ddp_worker.py"


def test_two_processes_match_one(tmp_path: Path) -> None:
    steps, batch = 7, 8  # 48 samples / 8 = 6 steps per epoch: crosses an epoch boundary
    port = free_port()
    procs = []
    for rank in range(2):
        env = rank_env(rank, 2, port)
        cmd = [sys.executable, str(WORKER), str(tmp_path / "two"), str(batch), str(steps)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    run_worker(tmp_path / "one", batch, steps)  # the single-process reference, meanwhile
    for proc in procs:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output.decode()[-3000:]

    one = torch.load(tmp_path / "one" / "weights.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "weights.pt", weights_only=True)
    for key, value in one.items():
        assert not torch.equal(value, torch.zeros_like(value))
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # losses are averaged over the ranks: both ranks log the same, equal to one process's
    loss_one = torch.load(tmp_path / "one" / "losses_0.pt")
    loss_r0 = torch.load(tmp_path / "two" / "losses_0.pt")
    loss_r1 = torch.load(tmp_path / "two" / "losses_1.pt")
    assert len(loss_one) == steps
    assert loss_r0 == loss_r1
    assert loss_r0 == pytest.approx(loss_one, rel=1e-4)
