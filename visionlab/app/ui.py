"""The web app's page (Gradio Blocks): pick a model and an image (an upload or a scenes
sample), see the drawing, the JSON record and the time taken; a score-threshold slider and
a gallery of the last predictions. Every refusal (not an image, too large, a decompression
bomb, a model that fails to load) is a message in the page; the server keeps serving.

An upload is decoded once, its file deleted at once (uploads are not kept after the
request), and its pixels kept in the browser session's state so that a new threshold or
model predicts it again. The endpoint ``/predict`` (a model label, an image file, the
threshold and top k -> the JSON record and the status line) serves programs, the load test
among them (:mod:`visionlab.app.loadtest`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from visionlab.app.core import MAX_PIXELS, ModelCache, Uploads, predict_image, scenes_samples
from visionlab.errors import VisionLabError

GALLERY_SIZE = 8  # the last predictions shown, per browser session
CONCURRENT = 2  # predictions at once: more only share the same cores
SESSIONS = 100  # browser sessions whose state (an image, the gallery) the server keeps
NO_SAMPLE = "(none: upload an image)"
# fonts the browser has: the default theme would ask Google Fonts, which no offline machine
# (nor a private one) should be asked for
_SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "monospace"]


def _refused(err: Exception) -> str:
    return f"**Refused:** {err}"


def build_app(cache: ModelCache, *, max_pixels: int = MAX_PIXELS) -> Any:
    """The Gradio Blocks of the app (``app.visionlab_theme``: the theme to launch it with);
    ``cache`` holds the models offered."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    samples = scenes_samples()
    uploads = Uploads(max_pixels=max_pixels)
    labels = list(cache.choices)

    def pick(sample: str) -> Any:
        return (sample, samples[sample]) if sample in samples else None

    def predict_one(label: str, current: Any, threshold: float, topk: float) -> Any:
        if current is None:
            raise VisionLabError("no image: upload one or pick a scenes sample")
        name, image = current
        if image.dtype == torch.uint8:
            image = image.float() / 255
        model = cache.get(label)
        result = predict_image(
            model, image, name=name, score_threshold=threshold, topk=int(topk), device=cache.device
        )
        status = (
            f"**{label}** ({model.task}) on {name}: predicted in {result.predict_ms:.0f} ms, "
            f"drawn in {result.draw_ms:.0f} ms"
        )
        return name, result, status

    def run(
        label: str, current: Any, threshold: float, topk: float, history: list[Any]
    ) -> tuple[Any, Any, str, list[Any], list[Any]]:
        try:
            name, result, status = predict_one(label, current, threshold, topk)
        except VisionLabError as err:
            return None, {"error": str(err)}, _refused(err), history, history
        history = [(result.drawing, f"{name} · {label}"), *history][:GALLERY_SIZE]
        return result.drawing, result.record, status, history, history

    def run_upload(
        label: str, upload: str | None, threshold: float, topk: float, history: list[Any]
    ) -> tuple[Any, ...]:
        """An upload decoded (its uint8 pixels kept in the session for the next
        prediction), its file deleted, and predicted."""
        try:
            image = uploads.read(upload) if upload else None
        except VisionLabError as err:
            return None, {"error": str(err)}, _refused(err), history, history, None, None
        current = None if image is None else (Path(upload).name, (image * 255).round().byte())
        return (*run(label, current, threshold, topk, history), current, None)

    def run_file(label: str, file: str | None, threshold: float, topk: float) -> Any:
        try:
            if not file:
                raise VisionLabError("no image file sent")
            current = (Path(file).name, uploads.read(file))
            _, result, status = predict_one(label, current, threshold, topk)
        except VisionLabError as err:
            return {"error": str(err)}, _refused(err)
        return result.record, status

    with gr.Blocks(title="visionlab", delete_cache=(600, 600)) as app:
        app.visionlab_theme = gr.themes.Default(font=_SYSTEM_FONTS, font_mono=_MONO_FONTS)
        gr.Markdown("# visionlab\nPredict an image with a trained model or an exported one.")
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(labels, value=labels[0], label="Model", elem_id="model")
                upload = gr.File(label="Upload an image", type="filepath", elem_id="upload")
                sample = gr.Dropdown(
                    [NO_SAMPLE, *samples],
                    value=NO_SAMPLE,
                    label="or pick a scenes sample",
                    elem_id="sample",
                )
                threshold = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Score threshold")
                topk = gr.Slider(1, 10, value=5, step=1, label="Top k (classification)")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                drawing = gr.Image(label="Prediction", type="pil", elem_id="drawing")
                record = gr.JSON(label="JSON", elem_id="record")
        gallery = gr.Gallery(label="Last predictions", columns=4, elem_id="gallery")
        current, history = gr.State(None), gr.State([])
        shown = [drawing, record, status, gallery, history]
        settings = [model, current, threshold, topk, history]
        upload.upload(
            run_upload,
            [model, upload, threshold, topk, history],
            [*shown, current, upload],
            api_name=False,
        )
        sample.change(pick, [sample], [current], api_name=False).then(
            run, settings, shown, api_name=False
        )
        button.click(run, settings, shown, api_name=False)
        threshold.release(run, settings, shown, api_name=False)
        model.change(run, settings, shown, api_name=False)
        with gr.Row(visible=False):  # the programs' endpoint, without a place in the page
            file_in = gr.File(type="filepath")
            api_record, api_status = gr.JSON(), gr.Markdown()
            api_button = gr.Button()
        api_button.click(
            run_file,
            [model, file_in, threshold, topk],
            [api_record, api_status],
            api_name="predict",
        )
    # predictions run this many at a time; more requests wait in the queue, none refused
    app.queue(default_concurrency_limit=CONCURRENT, max_size=None)
    return app
