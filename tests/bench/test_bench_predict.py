"""`visionlab bench predict`: every family and path measured, ratios to eager, the targets
judged, the plot written; the paths take turns round by round."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import pytest

from visionlab.bench import predict as bench
from visionlab.bench.commands import _run_suite


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("bench-predict")
    assert _run_suite("predict", ["--quick", "--threads", "1"], str(out)) == 0
    return (out / "predict.md").read_text(), out


def _table(text: str) -> list[dict[str, str]]:
    head = "| family | px | batch | path | images/s | x eager | ms/image | detections/image "
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_every_family_and_path_is_measured_with_ratios_to_eager(
    report: tuple[str, Path],
) -> None:
    rows = _table(report[0])
    for family, (_, batches, _) in bench.FAMILIES.items():
        for path in bench.PATHS:
            mine = [r for r in rows if r["family"] == family and r["path"] == path]
            assert len(mine) == len(batches), (family, path, mine)  # quick: one size
            for r in mine:
                assert float(r["images/s"]) > 0 and float(r["GFLOP/s"]) > 0, r
                assert float(r["GFLOP/image"]) > 0 and float(r["% of matmul"]) > 0, r
                operators = r["onnxruntime operators"]
                if path == "onnxruntime":  # its profile: operator types and their shares
                    assert re.fullmatch(r"\w+ \d+%(, \w+ \d+%){0,2}", operators), operators
                else:
                    assert operators == "-", r
                detected = r["detections/image"]
                is_detector = family in ("YOLO v1", "Faster R-CNN", "Mask R-CNN")
                assert (detected != "-") == is_detector and (detected == "-" or
                                                             float(detected) >= 0)  # fmt: skip
    for r in rows:
        eager = next(
            e for e in rows if e["path"] == "eager" and
            (e["family"], e["px"], e["batch"]) == (r["family"], r["px"], r["batch"])
        )  # fmt: skip
        ips, base = float(r["images/s"]), float(eager["images/s"])
        # the ratio is printed to 2 decimals, images/s to 1: allow for both roundings
        slack = 0.006 + (ips / base) * (0.06 / ips + 0.06 / base)
        assert abs(float(r["x eager"]) - ips / base) <= slack, (r, eager)
        assert abs(float(r["ms/image"]) - 1000 / ips) <= 0.006 + 1000 * 0.06 / ips**2, r
        gflops, mm = float(r["GFLOP/s"]), float(r["matmul GFLOP/s"])
        assert mm > 0 and gflops == pytest.approx(float(r["GFLOP/image"]) * ips, rel=0.05, abs=0.1)
        assert float(r["% of matmul"]) == pytest.approx(100 * gflops / mm, rel=0.01, abs=0.2), r
    assert {r["x eager"] for r in rows if r["path"] == "eager"} == {"1.00"}


def test_targets_are_judged_and_the_run_is_described(report: tuple[str, Path]) -> None:
    text, out = report
    targets = text.split("## Targets", 1)[1]
    for family in bench.TARGET_ORT_FAMILIES:
        assert re.search(
            rf"onnxruntime >= 1\.3x eager .*{re.escape(family)}.*: (met|\*\*not met\*\*) \(",
            targets,
        )
    for line in targets.splitlines():  # a target missed names onnxruntime's time there
        if line.startswith("- onnxruntime") and "not met" in line:
            assert re.search(r"onnxruntime's kernel time at \d+ px b\d+: \w+ \d+%", line)
    assert re.search(
        r"40% of the matmul rate, classifier at batch \d+, \d+ px: (met|\*\*not met\*\*) \(",
        targets,
    )
    assert "- Command: `" in text and "- Machine: " in text and "Load average" in text
    assert "Threads: 1 " in text
    assert (out / "predict.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paths_take_turns_round_by_round_and_a_round_is_timed_whole() -> None:
    calls: list[tuple[str, int]] = []

    class Bar:
        updates = 0

        def update(self, n: int) -> None:
            self.updates += n

    def path(name: str, ms: float):
        def predict(batch: int) -> list:
            calls.append((name, batch))
            time.sleep(ms / 1000)
            return []

        return predict

    bar = Bar()
    paths = {"a": path("a", 2.0), "b": path("b", 5.0)}
    once = {"ref": lambda: paths["a"](-1)}  # once a round, after the paths
    ms = bench.time_paths(paths, [0, 1], rounds=3, bar=bar, once=once)
    # a round is both batches: at least twice the time slept, under four times
    assert 4.0 <= ms["a"] < 8.0 and 10.0 <= ms["b"] < 20.0 and 2.0 <= ms["ref"] < 4.0, ms
    one_round = [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("a", -1)]
    assert calls == one_round * 4  # the warm-up round, then 3 rounds, taking turns
    assert bar.updates == 3


def test_sections_are_listed_in_order_with_their_steps() -> None:
    args = argparse.Namespace(
        families="classifier,Mask R-CNN", sizes="128,320", rounds=5, quick=False
    )
    assert bench.SECTIONS[0].name == "Model throughput"
    # per size: classifier (export + 5 rounds x 2 batches) + Mask R-CNN (export + 5 rounds)
    assert bench.throughput_steps(args) == 2 * (11 + 6)


def test_trained_weights_are_used_where_a_run_has_them(tmp_path: Path) -> None:
    import torch

    from visionlab.engine.checkpoint import load_checkpoint, save_checkpoint

    seeded, source = bench.build_family("classifier", 64, tmp_path / "seeded", None)
    assert source == f"registry, seed {bench.SEED}"
    state = load_checkpoint(seeded)["model"]
    trained = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    runs = tmp_path / "runs"
    save_checkpoint(runs / "classify_scenes" / "checkpoints" / "best.pt", {"model": trained})
    path, source = bench.build_family("classifier", 64, tmp_path / "trained", runs)
    assert "classify_scenes/checkpoints/best.pt" in source
    loaded = load_checkpoint(path)
    assert loaded["image_size"] == 64
    assert all(torch.equal(loaded["model"][k], v) for k, v in trained.items())
    # a family without a run keeps the seeded weights
    _, source = bench.build_family("FCN-8s", 64, tmp_path / "trained", runs)
    assert source == f"registry, seed {bench.SEED}"


def test_the_web_app_load_test_answers_every_request(report: tuple[str, Path]) -> None:
    text, _ = report
    assert [s.name for s in bench.SECTIONS] == ["Model throughput", "Web app load test"]
    section = text[text.index("## Web app load test") :]
    head = "| model | weights | sent | answered | lost | refused | p50 ms | p95 ms |"
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    rows = [line.strip("|").split("|") for line in lines[start + 2 : start + 4]]
    assert [r[0].strip() for r in rows] == ["classifier", "Faster R-CNN"]
    for r in rows:
        sent, answered, lost, refused, p50, p95 = (float(c) for c in r[2:8])
        assert sent == answered == 8 and lost == refused == 0
        assert 0 < p50 <= p95
    assert "Result: every request answered." in section
