"""visionlab: the four tasks of computer vision and the classic detector lineage on PyTorch.

Public API (imported lazily so that ``import visionlab`` stays light):
``build_model``, ``list_models``, ``load_dataset``, ``train``, ``evaluate``, ``predict``,
``predict_stream``, ``load``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build_model": "visionlab.models.registry",
    "list_models": "visionlab.models.registry",
    "load_dataset": "visionlab.data.datasets",
    "train": "visionlab.engine.api",
    "evaluate": "visionlab.engine.api",
    "predict": "visionlab.engine.api",
    "predict_stream": "visionlab.engine.api",
    "load": "visionlab.engine.api",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'visionlab' has no attribute {name!r}")
