"""Models: the registry (``build_model``, ``list_models``, ``model_info``), backbones,
classifiers and the detector / segmentation families built from them.

Model modules register their builders when imported; the registry imports every module of
this package on first use, so this package stays light and no list of modules is kept.
"""

from visionlab.models.registry import (
    ModelInfo,
    build_model,
    list_models,
    model_info,
    register_model,
)

__all__ = ["ModelInfo", "build_model", "list_models", "model_info", "register_model"]
