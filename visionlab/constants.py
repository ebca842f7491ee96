"""Constants more than one package of visionlab reads, defined once here.

A leaf: this module imports nothing from visionlab, so any module may import it without
creating an import cycle.
"""

from __future__ import annotations

__all__ = ["BOX_TASKS", "IGNORE_INDEX", "STACKED_TASKS", "TASKS"]

# The "don't care" label of a semantic map (``semantic [H, W] int64``): VOC's object
# boundaries, crowd regions and padding. Left out of the loss and of every metric.
IGNORE_INDEX = 255

# The tasks a recipe, a dataset and a model are for. "instance" is detection with masks;
# "relation" is detection with relationships (subject, predicate, object) between the boxes.
TASKS = ("classification", "segmentation", "detection", "instance", "relation")

# Tasks whose targets and predictions are boxes (the detector contract).
BOX_TASKS = ("detection", "instance", "relation")

# Tasks whose batches stack into one tensor (every image has the same size); the others
# batch as lists of images of any size.
STACKED_TASKS = ("classification", "segmentation")
