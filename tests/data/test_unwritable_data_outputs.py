"""`visionlab data scenes | convert | show` with an output that cannot be written: one line
naming the path and the reason, exit 2, no traceback, before the long work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionlab.cli import main
from visionlab.data import datasets, scenes

# What the line must give as the reason, per case (the kernel words the first one).
REASONS = {
    "read_only_parent": ("Permission denied", "Operation not permitted", "Read-only file system"),
    "parent_is_a_file": ("not a folder",),
    "output_is_a_file": ("not a folder", "not an empty folder"),
}
CASES = tuple(REASONS)


def _bad_output(case: str, unwritable_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """An output folder that cannot be made, and the path the error must name."""
    if case == "read_only_parent":
        return unwritable_dir / "out", str(unwritable_dir / "out")
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("a regular file")
    if case == "parent_is_a_file":
        return blocker / "out", str(blocker)
    return blocker, str(blocker)


def _no_long_work(*args: object, **kwargs: object) -> None:
    raise AssertionError("the long work started before the output was checked")


# action -> (module, its function that does the long work, argv for a source and an output)
ACTIONS = {
    "scenes": (
        scenes,
        "render_split",
        lambda src, out: ["scenes", str(out), "--train", "1", "--val", "1", "--size", "32"],
    ),
    "convert": (
        datasets,
        "open_split",
        lambda src, out: ["convert", str(src), str(out), "--to", "yolo"],
    ),
    "show": (
        datasets,
        "load_dataset",
        lambda src, out: ["show", str(src), "--out", str(out), "-n", "1"],
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("action", ACTIONS)
def test_unwritable_output_is_one_line_before_the_work(
    action: str,
    case: str,
    coco_root: Path,
    unwritable_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module, long_work, argv = ACTIONS[action]
    out, named = _bad_output(case, unwritable_dir, tmp_path)
    monkeypatch.setattr(module, long_work, _no_long_work)
    code = main(["data", *argv(coco_root, out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("visionlab data: error: ") and named in err, err
    assert any(reason in err for reason in REASONS[case]), err


def test_show_still_writes_a_new_nested_folder(coco_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "nested"
    assert main(["data", "show", str(coco_root), "--out", str(out), "-n", "1"]) == 0
    assert (out / "grid.png").is_file()
