"""Exported models as ``visionlab.load`` returns checkpoints: a module with ``.task``,
``.classes``, ``.predicates``, ``.image_size`` and ``.meta`` whose call answers as the eager
model's does (classifier logits, segmentation logits, per-image detection dicts), so the
tasks' ``predict`` and everything after it run unchanged.

ONNX files run on onnxruntime's CPU provider; ``.pt2`` programs through
``torch.export.load``.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from visionlab.constants import STACKED_TASKS
from visionlab.engine.checkpoint import WEIGHTS
from visionlab.errors import CheckpointError
from visionlab.export.two_stage import RELATION_OUTPUTS
from visionlab.export.writers import META_FILE, META_KEY, ONNX_FILE, PROGRAM_FILE

EXPORT_SUFFIXES = (".onnx", ".pt2")


def find_export(path: Path) -> Path | None:
    """The exported model file ``path`` names (itself, or the one in an export folder);
    None when it names none. A folder holding safetensors weights is the whole model, which
    ``visionlab.load`` rebuilds instead."""
    if path.suffix in EXPORT_SUFFIXES:
        return path
    if path.is_dir() and not (path / WEIGHTS).is_file():
        for name in (ONNX_FILE, PROGRAM_FILE):
            if (path / name).is_file():
                return path / name
    return None


class ExportedModel(nn.Module):
    """An exported graph (:mod:`visionlab.export.graphs`) behind the eager call contract."""

    def __init__(self, run: Any, meta: dict[str, Any]) -> None:
        super().__init__()
        self._run = run  # images [B, 3, H, W] -> the graph's outputs by name
        self.meta = meta
        self.task = meta["task"]
        self.classes = list(meta.get("classes") or [])
        self.predicates = list(meta.get("predicates") or [])
        self.image_size = meta.get("image_size")
        self.build_args = {"name": meta["model_name"], **(meta.get("model_args") or {})}

    def outputs(self, images: Tensor) -> dict[str, Tensor]:
        """The graph's named outputs for a batch, on the images' device."""
        out = self._run(images.detach().float().cpu().contiguous())
        return {k: v.to(images.device) for k, v in out.items()}

    def forward(self, images: Tensor | list[Tensor], extras: Collection[str] = ()) -> Any:
        """As the eager model answers: classifier and FCN logits for a stacked batch,
        per-image detection dicts for a list of images (a relation model's ``pairs`` and
        ``predicate_scores`` only with the extra ``relation_pairs``, as the eager head)."""
        if self.task in STACKED_TASKS:
            return self.outputs(images)["logits"]
        results = self._detect(list(images))
        if "relation_pairs" not in extras:
            for out in results:
                out.pop("pairs", None)
                out.pop("predicate_scores", None)
        return results

    def _detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """One graph call for images of one size, one per image otherwise (and always for a
        graph that takes one image)."""
        if self.meta["dynamic"]["batch"] and len({tuple(im.shape) for im in images}) == 1:
            groups = [images]
        else:
            groups = [[im] for im in images]
        results: list[dict[str, Tensor]] = []
        for group in groups:
            out = self.outputs(torch.stack(group))
            index = out["batch_index"]
            for i in range(len(group)):
                keep = index == i
                results.append(
                    {
                        k: v if k in RELATION_OUTPUTS else v[keep]  # one image a call
                        for k, v in out.items()
                        if k != "batch_index"
                    }
                )
        return results


def _onnx_runner(path: Path) -> tuple[Any, dict[str, Any]]:
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # torch's thread count (``torch.set_num_threads``, ``--threads``) for both runtimes;
        # idle threads sleep instead of spinning, which would take the cores from whatever
        # runs next in the process (the eager models, the data loader's work)
        options.intra_op_num_threads = torch.get_num_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise CheckpointError(f"{path}: not an ONNX model onnxruntime can run ({err})") from None
    text = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if text is None:
        raise CheckpointError(f"{path}: not a visionlab export (no {META_KEY!r} metadata)")
    names = [o.name for o in session.get_outputs()]

    def run(images: Tensor) -> dict[str, Tensor]:
        values = session.run(names, {"images": images.numpy()})
        return {n: torch.from_numpy(v) for n, v in zip(names, values)}

    return run, json.loads(text)


def _program_runner(path: Path) -> tuple[Any, dict[str, Any]]:
    meta_path = path.parent / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: {META_FILE} is missing beside it (visionlab export)")
    meta = json.loads(meta_path.read_text())
    try:
        module = torch.export.load(str(path)).module()
    except Exception as err:
        raise CheckpointError(f"{path}: not a torch.export program ({err})") from None
    names = meta["outputs"]

    def run(images: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            return dict(zip(names, module(images)))

    return run, meta


def load_exported(path: Path) -> ExportedModel:
    """An exported ``model.onnx`` / ``model.pt2`` (or its folder) ready to predict."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    run, meta = (_onnx_runner if path.suffix == ".onnx" else _program_runner)(path)
    return ExportedModel(run, meta).eval()
