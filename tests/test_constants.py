"""Cross-package constants: defined once in visionlab/constants.py, a leaf module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import visionlab
from visionlab import constants
from visionlab.config import Config, validate
from visionlab.constants import IGNORE_INDEX, STACKED_TASKS, TASKS
from visionlab.data.loader import collate_for, stack_collate
from visionlab.tasks import get_task

PACKAGE_DIR = Path(visionlab.__file__).parent


def _assigned_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_constants_is_a_leaf() -> None:
    tree = ast.parse(Path(constants.__file__).read_text(encoding="utf-8"))
    imported = [
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [m for m in imported if m.split(".")[0] == "visionlab"]


def test_each_constant_is_defined_once() -> None:
    shared = set(constants.__all__)
    copies = {
        str(path.relative_to(PACKAGE_DIR.parent)): sorted(found)
        for path in PACKAGE_DIR.rglob("*.py")
        if path != Path(constants.__file__)
        and (found := shared & _assigned_names(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert not copies, f"import these from visionlab.constants instead: {copies}"


def test_values() -> None:
    assert IGNORE_INDEX == 255  # VOC's boundary label; label PNGs hold it as a uint8
    assert set(STACKED_TASKS) <= set(TASKS) and len(set(TASKS)) == len(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_has_an_adapter_a_collate_and_is_a_valid_recipe(task: str) -> None:
    assert get_task(task).name == task
    assert (collate_for(task) is stack_collate) == (task in STACKED_TASKS)
    assert validate(Config(task=task)).task == task
