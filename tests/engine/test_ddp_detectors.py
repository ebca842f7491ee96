"""Detectors that read the backbone below stride 32 train under DistributedDataParallel:
`visionlab train` in two CPU processes (Gloo, torchrun's environment variables) runs,
checkpoints and resumes. DDP fails a step when a parameter that requires a gradient gets
none; the stages past a detector's deepest map must therefore not require one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from engine_standins import free_port, rank_env

from visionlab.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# Tiny detectors on their stride-8 / stride-16 maps, as the scenes recipes use them.
MODELS = {
    "yolo": "{'backbone_width': 4, 'input_size': 64, 'head': 'conv', 'feature_stride': 8, "
    "'head_channels': 16}",
    "faster_rcnn": "{'backbone_width': 4, 'feature_stride': 16, 'box_head': {'fc_width': 16}}",
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from visionlab.data.scenes import render_scenes

    out = tmp_path_factory.mktemp("scenes") / "scenes"
    return render_scenes(out, n_train=8, n_val=2, size=64, progress=False, workers=0)


def _train_in_two_processes(args: list[str], cwd: Path) -> None:
    """`python -m visionlab train ARGS` as ranks 0 and 1 of one job; both must exit 0."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = rank_env(rank, 2, port)
        cmd = [sys.executable, "-m", "visionlab", "train", *args]
        procs.append(
            subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    outputs = []
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append((proc.returncode, output.decode()[-3000:]))
    for rank, (code, output) in enumerate(outputs):
        assert code == 0, f"rank {rank}:\n{output}"


def _last_checkpoints(out: Path) -> list[Path]:
    return sorted(out.rglob("checkpoints/last.pt"))


def _args(model: str, scenes: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data={scenes}",
        f"out={out}",
        "task=detection",
        f"model={model}",
        f"model_args={MODELS[model]}",
        "image_size=64",
        "train.max_steps=3",
        "train.batch_size=2",
        "train.progress=false",
        *extra,
    ]


def test_two_processes_train_faster_rcnn(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    _train_in_two_processes(_args("faster_rcnn", scenes, out), cwd=tmp_path)
    (last,) = _last_checkpoints(out)  # one run folder, written by rank 0 only
    assert load_checkpoint(last)["step"] == 3


def test_two_processes_stop_and_resume_yolo(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    _train_in_two_processes(_args("yolo", scenes, out, "train.stop_at_step=2"), cwd=tmp_path)
    (last,) = _last_checkpoints(out)
    assert load_checkpoint(last)["step"] == 2
    run_dir = last.parent.parent
    _train_in_two_processes(["--resume", str(run_dir)], cwd=tmp_path)
    assert _last_checkpoints(out) == [last]  # the same run folder, continued
    assert load_checkpoint(last)["step"] == 3


def test_two_processes_run_the_stages_of_sppnet_on_rank_0(scenes: Path, tmp_path: Path) -> None:
    # the stages train in one process: rank 0 trains, rank 1 exits at once
    out = tmp_path / "runs"
    model_args = (
        "{'backbone_width': 8, 'fc_width': 32, 'scales': [64], 'levels': [2, 1], "
        "'feature_stride': 8, 'proposals': {'search_size': 64}, "
        "'finetune': {'eval_images': -1, 'regions_per_image': 16}}"
    )
    args = [
        f"data={scenes}",
        f"out={out}",
        "task=detection",
        "model=sppnet",
        f"model_args={model_args}",
        "image_size=64",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.progress=false",
    ]
    _train_in_two_processes(args, cwd=tmp_path)
    (last,) = _last_checkpoints(out)
    assert load_checkpoint(last)["stages_done"] == [
        "proposals",
        "finetune",
        "features",
        "svm",
        "box_reg",
    ]
