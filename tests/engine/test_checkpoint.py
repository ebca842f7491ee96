"""Checkpoint files: atomic writes, weights_only loading, RNG capture, safetensors export."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from visionlab.engine import checkpoint as ckpt
from visionlab.errors import CheckpointError


def test_atomic_save_keeps_the_old_file_when_a_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt.save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def broken_save(obj, f) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left
    assert ckpt.load_checkpoint(path)["step"] == 1


def test_plain_checkpoint_round_trip_with_rng(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = {"step": 4, "rng": ckpt.rng_state(), "nested": {"x": [1, 2.5, "a", None]}}
    ckpt.save_checkpoint(tmp_path / "a.pt", state)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    loaded = ckpt.load_checkpoint(tmp_path / "a.pt")
    ckpt.set_rng_state(loaded["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert loaded["nested"] == {"x": [1, 2.5, "a", None]}


class _Payload:
    """Unpickling this would create ``marker``: weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_arbitrary_pickles_are_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load"):
        ckpt.load_checkpoint(path)
    assert not marker.exists()


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        ckpt.load_checkpoint(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable checkpoint") as err:
        ckpt.load_checkpoint(junk)
    assert "arbitrary Python objects" not in str(err.value)  # damaged, not dangerous
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(
        CheckpointError, match=r"empty\.pt: not a readable checkpoint \(empty file\)"
    ):
        ckpt.load_checkpoint(empty)
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor_only)
    with pytest.raises(CheckpointError, match="expected a checkpoint dict"):
        ckpt.load_checkpoint(tensor_only)


def test_export_round_trip_keeps_tied_weights(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    model[1].weight = model[0].weight  # tied: safetensors refuses shared storage as is
    meta = {"model_name": "two_linear", "model_args": {}, "classes": ["a", "b", "c"]}
    weights, sidecar = ckpt.export_safetensors(model, tmp_path / "export", meta)
    assert weights.name == "model.safetensors" and sidecar.name == "model.json"
    got_meta, state = ckpt.read_export(tmp_path / "export")
    assert got_meta["classes"] == ["a", "b", "c"]
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)
    with pytest.raises(CheckpointError, match=r"missing model\.json"):
        ckpt.read_export(tmp_path)
