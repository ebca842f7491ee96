"""Checkpoint files: atomic writes, weights_only loading, RNG capture, safetensors export."""

from __future__ import annotations

import os
import pickle
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


class _ShellPayload:
    """Unpickling this would run a shell command (``os.system``) that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize(
    "write",
    [
        lambda obj, f: torch.save(obj, f),
        lambda obj, f: torch.save(obj, f, _use_new_zipfile_serialization=False),
        lambda obj, f: pickle.dump(obj, f, protocol=0),
        lambda obj, f: pickle.dump(obj, f, protocol=2),
        lambda obj, f: pickle.dump(obj, f, protocol=4),
        lambda obj, f: pickle.dump(obj, f, protocol=5),
    ],
    ids=["torch.save", "torch.save-legacy", "pickle-0", "pickle-2", "pickle-4", "pickle-5"],
)
def test_code_in_a_checkpoint_is_named_and_not_run(tmp_path: Path, write) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    # the module name as a key first: protocol 4 then fetches it from the memo for STACK_GLOBAL
    state = {os.system.__module__: 1, "model": {"w": torch.ones(2)}}
    with open(path, "wb") as f:
        write({**state, "payload": _ShellPayload(marker)}, f)
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(path)
    message = str(err.value)
    assert not marker.exists()
    assert message.startswith(f"{path}: refused to load: the file asks to run code")
    assert f"{os.system.__module__}.system" in message  # posix.system on Linux
    assert "nothing in it ran" in message
    assert "unless you trust its source" in message
    assert "damaged" not in message and "not a readable checkpoint" not in message
    assert "Re-running" not in message and "will likely succeed" not in message
    assert "\n" not in message


def test_damaged_or_foreign_pickles_are_unreadable_not_dangerous(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    evil = pickle.dumps({"payload": _ShellPayload(marker)}, protocol=4)
    cases = {
        "truncated.pt": evil[: len(evil) // 2],  # pickletools cannot parse it to its end
        "plain.pt": pickle.dumps({"step": 1, "lr": 0.1}, protocol=4),  # no code, not torch
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as err:
            ckpt.load_checkpoint(tmp_path / name)
        message = str(err.value)
        assert message.startswith(f"{tmp_path / name}: not a readable checkpoint (")
        assert "asks to run code" not in message
        assert "weights_only" not in message and "Re-running" not in message
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
    assert "asks to run code" not in str(err.value)  # damaged, not dangerous
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
