"""Learning test: tiny_cnn memorises a few dozen scenes crops within seconds."""

from __future__ import annotations

import pytest
import torch

from visionlab.data.imageio import load_image
from visionlab.data.scenes import render_scenes
from visionlab.models.registry import build_model


@pytest.mark.slow
def test_tiny_cnn_overfits_32_crops(tmp_path):
    render_scenes(tmp_path / "scenes", n_train=16, n_val=0, progress=False, workers=0)
    crops = tmp_path / "scenes" / "crops" / "train"
    classes = sorted(p.name for p in crops.iterdir())
    files = sorted((f, classes.index(f.parent.name)) for f in crops.glob("*/*.png"))[:32]
    assert len(files) == 32, "16 scenes should give at least 32 crops"
    images = torch.stack([load_image(f) for f, _ in files])
    labels = torch.tensor([label for _, label in files])
    assert images.shape == (32, 3, 64, 64) and len(labels.unique()) > 1

    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()  # scored like an evaluation: running batch-norm statistics, no dropout
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert loss.item() < 0.05
    assert accuracy == 1.0
