"""Deployment exports: ONNX (``torch.onnx.export(..., dynamo=True)``, opset
:data:`.writers.OPSET`) and ``torch.export`` programs (``.pt2``) that predict from the file
alone, written with their metadata (:mod:`.writers`) and loaded back as models that
``visionlab predict`` runs like checkpoints (:mod:`.runtime`).

Inside every graph (input ``images [B, 3, H, W]``, RGB float in [0, 1], any size): the resize
to the model's image size (bilinear, antialiased, as the eval transform; YOLO to its own
input size, as ``YOLO.detect`` does), the normalisation (inside the models), the network,
and the post-processing, with results in the input's pixels: classifiers the softmax and
every class sorted by score (:mod:`.graphs`), FCNs the per-pixel argmax and score, YOLO and
Faster / Mask R-CNN the box decoding, score threshold, clipping, class-wise NMS and the
per-image limit (:func:`.graphs.select_detections`), Mask R-CNN the pasted masks and the
relation models every ordered pair of the objects kept, its predicate scores and the ranked
triplets with the model's graph constraint (:mod:`.two_stage`). Batch, height and width
are dynamic, except the two-stage batch: one image a call (their proposals are chosen per
image).

Outside, and why: the prediction options of ``visionlab predict`` (``--topk``, applied to
the sorted classes; ``--score-threshold``, applied to the detections past the model's own
``score_thresh``), and the extras ``--show-grid`` / ``--show-proposals`` (debugging views of
the eager models); for the relation models, ``--no-graph-constraint`` ranks the graph's
``pairs`` and ``predicate_scores`` outside (the ranking of :func:`visionlab.eval.relations.
rank_triplets`). Not exported: R-CNN, SPPNet and Fast R-CNN (their proposals come from
OpenCV's selective search, which no graph holds); their ``--format safetensors`` export
works. A graph that holds only for some image sizes (an FCN
trained without an ``image_size``: its "does this image need padding" branch becomes a
condition on the size) is found by running it on other sizes, and refused
(:func:`.writers.check_sizes`). A ``.pt2`` with detections calls the op
``visionlab::nms`` (torchvision's NMS with a fake kernel that allows any number of kept
boxes), so loading it needs ``visionlab`` imported; the ONNX file needs only onnxruntime.
"""
