"""`visionlab models`: the table, the task filter and the JSON listing."""

from __future__ import annotations

import json

from visionlab.cli import main

CLASSIFIERS = ["alexnet", "mobilenet_v3_small", "resnet18", "resnet50", "tiny_cnn", "vgg16"]


def test_models_table_lists_every_classifier(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "task", "summary"]
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    for name in CLASSIFIERS:
        assert rows[name] == "classification"


def test_models_task_filter_pattern_and_json(capsys):
    assert main(["models", "--task", "classification", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= set(CLASSIFIERS)
    assert all(r["task"] == "classification" and r["summary"] for r in rows)
    resnet = next(r for r in rows if r["name"] == "resnet18")
    assert resnet["args"]["num_classes"] == 1000
    assert main(["models", "res*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert names == ["resnet18", "resnet50"]


def test_models_unknown_task(capsys):
    assert main(["models", "--task", "clasification"]) == 2
    assert "did you mean 'classification'" in capsys.readouterr().err
