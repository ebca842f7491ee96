"""Models: the registry (``build_model``, ``list_models``, ``model_info``), backbones,
classifiers and the detector / segmentation families built from them.

Model modules register their builders when imported; the registry imports them on first
use (:data:`visionlab.models.registry.MODEL_MODULES`), so this package stays light.
"""

from visionlab.models.registry import (
    ModelInfo,
    build_model,
    list_models,
    model_info,
    register_model,
)

__all__ = ["ModelInfo", "build_model", "list_models", "model_info", "register_model"]
