"""Multi-stage training (R-CNN / SPPNet): hard negative mining, ridge regression, stage
resume and an overfit run on a few images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visionlab.config import from_dict
from visionlab.engine.stages import STAGES, limited_loader, run_stages
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


def test_transfer_pretrained_initialises_the_backbone(tmp_path: Path) -> None:
    # rcnn / sppnet take backbone weights only: `transfer.pretrained` is their backbone's
    from visionlab.engine.common import model_kwargs
    from visionlab.tasks import get_task

    cfg = _cfg(tmp_path, tmp_path / "run", "rcnn")
    cfg.transfer.pretrained = "classifier.pt"
    task = get_task("detection")
    kwargs = model_kwargs(cfg, task, ["a", "b"], resume=False)
    assert kwargs["pretrained_backbone"] == "classifier.pt" and "pretrained" not in kwargs
    assert "pretrained_backbone" not in model_kwargs(cfg, task, ["a", "b"], resume=True)


def _run_stages(cfg, resume_state=None, **kwargs):
    """run_stages in a run folder opened (and locked) as `visionlab train` opens it."""
    from visionlab.engine.rundir import open_run_folder

    folder = open_run_folder(cfg, resume=resume_state is not None, overwrite=False, is_main=True)
    try:
        return run_stages(cfg, None, folder=folder, resume_state=resume_state, **kwargs)
    finally:
        folder.close(ok=True)


def test_overfit_a_few_images(tiny_scenes: Path, tmp_path: Path) -> None:
    from visionlab.data.datasets import load_dataset
    from visionlab.engine.api import load, make_transform
    from visionlab.engine.trainer import evaluate
    from visionlab.tasks import get_task

    cfg = _cfg(tiny_scenes, tmp_path / "run", "sppnet")
    result = _run_stages(cfg)
    assert result.step == len(STAGES) and not result.interrupted
    model = load(result.checkpoints["last"])  # weights_only checkpoint rebuilds the model
    assert bool(model.svm_fitted) and bool(model.bbox_fitted)
    data = load_dataset(
        str(tiny_scenes),
        "train",
        task="detection",
        transforms=make_transform("detection", False, 64, {}),
    )
    task = get_task("detection")
    metrics = evaluate(model, task, limited_loader(data, 0, 0), task.evaluator(data.classes))
    assert metrics["AP50"] > 0.7, metrics


def test_stopped_run_resumes_after_the_last_finished_stage(tiny_scenes: Path, tmp_path: Path):
    cfg = _cfg(tiny_scenes, tmp_path / "run", "rcnn")
    cfg.train.max_steps = 2
    first = _run_stages(cfg, until="features")
    assert first.interrupted and first.step == 3
    before = torch.load(first.checkpoints["last"], weights_only=True)
    assert before["stages_done"] == ["proposals", "finetune", "features"]

    def fail() -> None:
        raise AssertionError("a finished stage ran again")

    hooks = {name: fail for name in ("proposals", "finetune", "features")}
    second = _run_stages(cfg, before, stage_hooks=hooks)
    assert second.step == len(STAGES) and not second.interrupted
    after = torch.load(second.checkpoints["last"], weights_only=True)
    assert after["stages_done"] == list(STAGES)
    assert torch.equal(after["model"]["cls_score.weight"], before["model"]["cls_score.weight"])
    assert bool(after["model"]["svm_fitted"])
