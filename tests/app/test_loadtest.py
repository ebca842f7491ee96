"""The app under load: 32 concurrent requests from the bounded client are all answered,
with the same prediction each, none lost."""

from __future__ import annotations

from pathlib import Path

from visionlab.app import serve
from visionlab.app.loadtest import load_test


def test_32_concurrent_requests_are_all_answered(app_models: Path, uploads: dict) -> None:
    label = "detection/checkpoints/best.pt"
    with serve([app_models], port=7871) as url:
        report = load_test(url, label, uploads["photo"], requests=32, concurrency=32, threshold=0.0)
        refused = load_test(url, label, uploads["text"], requests=2, concurrency=2)
    assert (report["answered"], report["lost"], report["refused"]) == (32, 0, 0)
    first = report["answers"][0]
    assert first["file"] == "photo.png" and len(first["detections"]) > 0
    assert all(answer == first for answer in report["answers"])
    assert report["p50_ms"] <= report["p95_ms"] <= report["max_ms"]
    assert (refused["answered"], refused["refused"]) == (2, 2)
    assert "not an image file" in refused["answers"][0]["error"]
