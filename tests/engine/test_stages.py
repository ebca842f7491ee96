"""Training in stages (R-CNN / SPPNet): hard negative mining, ridge regression, resume after a
finished stage and inside the Trainer's stage, and an overfit run on a few images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visionlab.config import from_dict
from visionlab.engine.api import train
from visionlab.models.rcnn import RegionDetector
from visionlab.models.svm import SVMSettings, fit_linear_svm, fit_ridge, mine_hard_negatives


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from visionlab.data.scenes import render_scenes

    out = tmp_path_factory.mktemp("scenes") / "s"
    return render_scenes(out, n_train=4, n_val=1, size=64, progress=False, workers=0)


@pytest.fixture(autouse=True, scope="module")
def _isolated(tmp_path_factory: pytest.TempPathFactory):
    # one selective-search cache for the module: the runs below share their proposals
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_HOME", str(tmp_path_factory.mktemp("home")))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)


def test_hard_negative_mining_keeps_only_hard_negatives() -> None:
    gen = torch.Generator().manual_seed(0)
    positives = torch.randn(40, 2, generator=gen) * 0.1 + torch.tensor([2.0, 2.0])
    easy = torch.randn(2000, 2, generator=gen) * 0.3 + torch.tensor([-4.0, -4.0])
    hard = torch.randn(30, 2, generator=gen) * 0.1 + torch.tensor([1.2, 1.2])
    negatives = torch.cat([easy, hard])[torch.randperm(2030, generator=gen)]
    settings = SVMSettings(C=1.0, chunks=4, rounds=2)
    w, b, stats = mine_hard_negatives(positives, list(negatives.chunk(4)), settings)
    assert bool(((positives @ w + b) > 0).all())
    assert bool(((negatives @ w + b) < 0).all())
    # the cache holds the hard negatives, not the 2000 easy ones the first (zero) SVM admits
    assert stats["cache"] < 200
    assert stats["hard_added"] >= len(hard)
    # ... and mining ends where training on every negative at once does
    x = torch.cat([positives, negatives])
    y = torch.cat([torch.ones(len(positives)), -torch.ones(len(negatives))])
    w_all, b_all = fit_linear_svm(x, y, C=settings.C, pos_weight=settings.pos_weight)
    near = torch.cat([positives, hard])  # where the margin is decided
    assert torch.allclose(near @ w + b, near @ w_all + b_all, atol=0.15)


def test_ridge_recovers_a_linear_map() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=gen)
    true = torch.randn(6, 4, generator=gen)
    y = x @ true + 0.5
    weight = fit_ridge(x, y, ridge=1e-3)
    assert torch.allclose(weight[:-1], true, atol=1e-3)
    assert torch.allclose(weight[-1], torch.full((4,), 0.5), atol=1e-3)


def _cfg(data: Path, out: Path, model: str, **extra):
    args = {
        "backbone_width": 8,
        "fc_width": 64,
        "dropout": 0.0,
        "proposals": {"search_size": 128},
        "finetune": {"hflip": False, "eval_images": -1, "regions_per_image": 32},
        "box_reg": {"ridge": 10.0},
    }
    if model == "sppnet":
        args.update(scales=[128], levels=[2, 1], feature_stride=8)
    else:
        args.update(input_size=32, context=2)
    return from_dict(
        {
            "task": "detection",
            "model": model,
            "data": str(data),
            "out": str(out),
            "image_size": 64,
            "model_args": {**args, **extra},
            "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0},
            "schedule": {"name": "constant"},
            "train": {"max_steps": 60, "batch_size": 4, "progress": False},
        }
    )


def test_initial_weights_have_one_knob(tmp_path: Path) -> None:
    # a backbone's initial weights are model_args.pretrained_backbone for every model;
    # transfer.pretrained (a whole model of the same kind) is refused naming that knob
    from visionlab.engine.common import model_kwargs
    from visionlab.errors import ConfigError
    from visionlab.tasks import get_task

    task = get_task("detection")
    for name in ("rcnn", "faster_rcnn"):
        cfg = _cfg(tmp_path, tmp_path / "run", name)
        cfg.transfer.pretrained = "classifier.pt"
        with pytest.raises(ConfigError, match=r"model_args\.pretrained_backbone=classifier\.pt"):
            model_kwargs(cfg, task, ["a", "b"], resume=False)
        assert "pretrained" not in model_kwargs(cfg, task, ["a", "b"], resume=True)
    cfg = _cfg(tmp_path, tmp_path / "run", "rcnn")
    cfg.model_args["pretrained_backbone"] = "classifier.pt"
    kwargs = model_kwargs(cfg, task, ["a", "b"], resume=False)
    assert kwargs["pretrained_backbone"] == "classifier.pt" and "pretrained" not in kwargs


def test_overfit_a_few_images(tiny_scenes: Path, tmp_path: Path) -> None:
    from visionlab.data.datasets import load_dataset
    from visionlab.engine.api import load, make_transform
    from visionlab.engine.trainer import eval_loader, evaluate
    from visionlab.tasks import get_task

    cfg = _cfg(tiny_scenes, tmp_path / "run", "sppnet")
    result = train(cfg)
    assert result.step == len(RegionDetector.stages) and not result.interrupted
    model = load(result.checkpoints["last"])  # weights_only checkpoint rebuilds the model
    assert bool(model.svm_fitted) and bool(model.bbox_fitted)
    data = load_dataset(
        str(tiny_scenes),
        "train",
        task="detection",
        transforms=make_transform("detection", False, 64, {}),
    )
    task = get_task("detection")
    metrics = evaluate(model, task, eval_loader(data, batch_size=8), task.evaluator(data.classes))
    assert metrics["AP50"] > 0.7, metrics


def test_stopped_run_resumes_after_the_last_finished_stage(
    tiny_scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(tiny_scenes, tmp_path / "run", "rcnn")
    cfg.train.max_steps = 2
    run_stage = RegionDetector.run_stage

    def ctrl_c_at_svm(self, name, *args, **kwargs):
        if name == "svm":
            raise KeyboardInterrupt  # what StopRequest raises outside the Trainer's stage
        return run_stage(self, name, *args, **kwargs)

    monkeypatch.setattr(RegionDetector, "run_stage", ctrl_c_at_svm)
    first = train(cfg)
    assert first.interrupted and first.step == 3
    before = torch.load(first.checkpoints["last"], weights_only=True)
    assert before["stages_done"] == ["proposals", "finetune", "features"]

    def only_the_rest(self, name, *args, **kwargs):
        assert name in ("svm", "box_reg"), f"the finished stage {name} ran again"
        return run_stage(self, name, *args, **kwargs)

    def no_training(*args, **kwargs):
        raise AssertionError("the finished fine-tuning ran again")

    monkeypatch.setattr(RegionDetector, "run_stage", only_the_rest)
    monkeypatch.setattr(RegionDetector, "train_stage_data", no_training)
    second = train(resume=first.run_dir)
    assert second.step == len(RegionDetector.stages) and not second.interrupted
    after = torch.load(second.checkpoints["last"], weights_only=True)
    assert after["stages_done"] == list(RegionDetector.stages)
    assert torch.equal(after["model"]["cls_score.weight"], before["model"]["cls_score.weight"])
    assert bool(after["model"]["svm_fitted"])


def test_finetune_stopped_at_a_step_resumes_exactly(tiny_scenes: Path, tmp_path: Path) -> None:
    # 2 images a step over 4 images: the stop (step 3) is inside the second epoch; the
    # flips, the region sampling and the cosine schedule must all continue where they were
    cfg = _cfg(tiny_scenes, tmp_path / "whole", "rcnn", dropout=0.5)
    cfg.model_args["finetune"]["hflip"] = True
    cfg.schedule.name, cfg.schedule.warmup_steps = "cosine", 2
    cfg.train.max_steps, cfg.train.batch_size = 5, 2
    whole = train(cfg)
    cfg.out, cfg.train.stop_at_step = str(tmp_path / "parts"), 3
    first = train(cfg)
    assert first.interrupted and first.step == 1  # proposals done, finetune stopped
    state = torch.load(first.checkpoints["last"], weights_only=True)
    assert state["step"] == 3 and state["stages_done"] == ["proposals"]
    second = train(resume=first.run_dir)
    assert not second.interrupted
    expected = torch.load(whole.checkpoints["last"], weights_only=True)
    got = torch.load(second.checkpoints["last"], weights_only=True)
    assert got["step"] == expected["step"] == 5
    for key, value in expected["model"].items():
        assert torch.equal(got["model"][key], value), key


def test_finetune_without_train_conv_keeps_the_backbone(tiny_scenes: Path, tmp_path: Path):
    from visionlab.models.registry import build_model

    finetune = {"hflip": False, "eval_images": -1, "train_conv": False}
    cfg = _cfg(tiny_scenes, tmp_path / "run", "rcnn", finetune=finetune)
    cfg.train.max_steps = 2
    state = torch.load(train(cfg).checkpoints["last"], weights_only=True)
    torch.manual_seed(cfg.seed)  # the initial weights, as the run built them
    initial = build_model(state["model_name"], **state["model_args"]).state_dict()
    trained = state["model"]
    backbone = [k for k in initial if k.startswith("backbone.")]
    assert backbone and all(torch.equal(trained[k], initial[k]) for k in backbone)  # BN too
    assert not torch.equal(trained["cls_score.weight"], initial["cls_score.weight"])
