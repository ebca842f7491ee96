"""Load pretrained weights from local files into classifiers and backbones.

Nothing here downloads: a weights file is a path or in the torch hub cache. Accepted:
torchvision and timm state dicts (optionally wrapped in ``{"state_dict": ...}`` or prefixed
``module.``), ``.safetensors`` files and directories holding ``model.safetensors``, and
visionlab checkpoints. Keys are renamed onto our modules (:data:`KEY_RULES`). The head
(``fc``) is dropped when its shape differs or, given ``classes``, when a visionlab checkpoint
was trained on other classes. Every backbone tensor must load, else
:class:`~visionlab.errors.CheckpointError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from visionlab.errors import CheckpointError

log = logging.getLogger(__name__)

# Our classifiers: ``backbone.*`` (the conv trunk), ``pre_logits.*`` (AlexNet/VGG fc6-fc7,
# MobileNet's 1024-wide layer), ``fc.*`` (the head). Rules rename a file's keys onto
# those names; keys already in our naming match no rule and pass unchanged.
BACKBONE_PREFIX = "backbone."  # a bare Backbone's names are the classifier's without it
_TV_SEQUENTIAL = [(r"^features\.", "backbone.features.")]
KEY_RULES: dict[str, list[tuple[str, str]]] = {
    "tiny_cnn": [(r"^(stem|stages)\.", r"backbone.\1.")],
    "alexnet": [
        *_TV_SEQUENTIAL,
        (r"^classifier\.6\.", "fc."),
        (r"^classifier\.(\d)\.", r"pre_logits.\1."),
    ],
    "vgg16": [
        *_TV_SEQUENTIAL,
        (r"^classifier\.6\.", "fc."),
        (r"^classifier\.(\d)\.", r"pre_logits.\1."),
        # timm: fc6/fc7 as convolutions in pre_logits.fc1/fc2, head in head.fc
        (r"^pre_logits\.fc1\.", "pre_logits.0."),
        (r"^pre_logits\.fc2\.", "pre_logits.3."),
        (r"^head\.fc\.", "fc."),
    ],
    "mobilenet_v3_small": [
        *_TV_SEQUENTIAL,
        (r"^classifier\.0\.", "pre_logits.0."),
        (r"^classifier\.3\.", "fc."),
    ],
}
for _resnet in ("resnet18", "resnet50"):  # torchvision and timm share these names
    KEY_RULES[_resnet] = [
        (r"^(conv1|bn1|layer\d)\.", r"backbone.\1."),
        (r"^head\.fc\.", "fc."),
    ]

HUB_ALIASES = ("hub", "default", "true")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        source: the file the weights came from.
        loaded: our parameter/buffer names that received a tensor.
        dropped: file tensors not used because they do not fit (``"fc.weight: ..."``).
        missing: our tensors the file has nothing for (they keep their initialisation).
        unexpected: file keys with no counterpart here.
        head_reset: whether the classifier head kept its fresh initialisation.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    head_reset: bool = False

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.dropped:
            parts.append(f"dropped {', '.join(self.dropped)}")
        if self.missing:
            parts.append(f"not in the file (left as initialised): {_short(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} file keys unused: {_short(self.unexpected)}")
        return "; ".join(parts)


def _short(names: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


# --------------------------------------------------------------------------- finding files


def torchvision_weights(arch: str, weights: str = "DEFAULT") -> Any:
    """torchvision's weights enum entry for ``arch`` (metadata only, nothing downloads)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise CheckpointError(
            f"{arch} has no published ImageNet weights; pass pretrained=PATH to a checkpoint "
            f"(e.g. one from `visionlab train` with model: {arch})"
        ) from None
    name = "DEFAULT" if weights.lower() in HUB_ALIASES else weights.upper()
    if name == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[name]
    except KeyError:
        known = ", ".join(w.name for w in enum)
        raise CheckpointError(f"{arch} has no weights {weights!r}; known: {known}") from None


def hub_weights_file(arch: str, weights: str = "DEFAULT") -> Path:
    """Where torchvision keeps ``arch``'s ImageNet weights:
    ``torch.hub.get_dir()/checkpoints/<file name of the weights' URL>``."""
    return _hub_path(torchvision_weights(arch, weights).url)


def _hub_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def resolve_source(source: bool | str | Path, arch: str) -> Path:
    """The local file for a ``pretrained=`` value.

    ``True``, ``"hub"`` or a torchvision weights name (``"IMAGENET1K_V2"``) mean the torch
    hub cache; anything else is a path. A file that is not there is an error that says
    what to put where (nothing can be downloaded).
    """
    if source is True or (isinstance(source, str) and _looks_like_weights_name(source)):
        weights = "DEFAULT" if source is True else str(source)
        entry = torchvision_weights(arch, weights)
        path = _hub_path(entry.url)
        if path.is_file():
            return path
        if weights.lower() in HUB_ALIASES:  # any other published file of arch will do
            for other in type(entry):
                alt = _hub_path(other.url)
                if alt.is_file():
                    return alt
        raise CheckpointError(
            f"{path}: pretrained {arch} weights are not on disk and this library never "
            f"downloads; place {path.name} (torchvision {arch} {entry.name}, from "
            f"{entry.url}) at {path}, or pass pretrained=PATH to a weights file"
        )
    if not isinstance(source, str | Path):
        raise CheckpointError(f"pretrained must be None, True, 'hub' or a path, got {source!r}")
    path = Path(source).expanduser()
    if path.is_dir():
        inner = path / "model.safetensors"
        if not inner.is_file():
            raise CheckpointError(f"{path}: directory without model.safetensors")
        return inner
    if not path.is_file():
        raise CheckpointError(
            f"{path}: pretrained weights file not found (train the run it names first, or set "
            "the key to null to start from random weights)"
        )
    return path


def _looks_like_weights_name(text: str) -> bool:
    if text.lower() in HUB_ALIASES:
        return True
    return bool(re.fullmatch(r"IMAGENET1K_[A-Z0-9_]+", text)) and not Path(text).exists()


# --------------------------------------------------------------------------- reading files


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors of a weights file and what the file says about itself.

    Returns:
        ``(state_dict, meta)``; ``meta`` holds ``model_name``, ``classes`` and ``task``
        for a visionlab checkpoint, else nothing.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
        return state, _export_sidecar(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: pretrained weights file not found") from None
    except Exception as err:  # unpickling errors have no common base class
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: cannot be loaded as plain tensors with torch.load(weights_only=True) "
            f"({reason[:200]})"
        ) from None
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and "model_name" in obj:
        meta = {k: obj.get(k) for k in ("model_name", "classes", "task", "model_args")}
        obj = obj["model"]
    else:
        for wrapper in ("state_dict", "model_state_dict", "model", "module"):
            if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(f"{path}: no tensors in the file")
    return state, meta


def _export_sidecar(weights: Path) -> dict[str, Any]:
    """``model_name`` and ``classes`` from the ``model.json`` that ``visionlab export``
    writes next to ``model.safetensors`` (nothing when there is none or it is unreadable:
    the tensors alone still load)."""
    import json

    sidecar = weights.with_name("model.json")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data.get(k) for k in ("model_name", "classes", "task") if data.get(k) is not None}


def convert_keys(state: Mapping[str, Tensor], arch: str) -> dict[str, Tensor]:
    """Rename torchvision/timm keys onto our classifier's names (see :data:`KEY_RULES`)."""
    rules = [(re.compile(p), r) for p, r in KEY_RULES.get(arch, [])]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for pattern, repl in rules:
            new, n = pattern.subn(repl, key, count=1)
            if n:
                key = new
                break
        out[key] = value
    return out


# --------------------------------------------------------------------------- loading


def load_pretrained(
    model: nn.Module,
    source: bool | str | Path | Mapping[str, Tensor],
    *,
    classes: Sequence[str] | None = None,
    prefix: str = "",
) -> LoadReport:
    """Load weights into a classifier (``backbone``/``pre_logits``/``fc``) or a backbone.

    Args:
        model: an :class:`~visionlab.models.classifier.ImageClassifier` or a
            :class:`~visionlab.models.backbones.Backbone`; its ``arch`` picks the key rules.
        source: a path (see the module docstring), ``True``/``"hub"``/a torchvision
            weights name for the torch hub cache, or an in-memory state dict.
        classes: the class names the model will learn. A visionlab checkpoint trained on
            other classes then leaves the head fresh even when the count is the same.
        prefix: where ``model``'s tensors sit in a classifier's state dict: ``""`` for a
            classifier, :data:`BACKBONE_PREFIX` for a bare backbone (the file's
            ``backbone.*`` tensors load without the prefix; ``pre_logits.*`` and ``fc.*``
            are left out).

    Returns:
        A :class:`LoadReport` (also logged).

    Raises:
        CheckpointError: missing or unreadable file, nothing in it matching, or backbone
            tensors missing or of another shape (a file of another architecture).
    """
    arch = getattr(model, "arch", "")
    if not arch:
        raise CheckpointError(f"{type(model).__name__} has no `arch`: cannot load weights into it")
    meta: dict[str, Any] = {}
    if isinstance(source, Mapping):
        name, state = "<state dict>", dict(source)
    else:
        path = resolve_source(source, arch)
        name = str(path)
        state, meta = read_state_dict(path)
    state = convert_keys(state, arch)
    only_backbone = bool(prefix)
    if only_backbone:  # the backbone's own names are the classifier's without the prefix
        state = {k.removeprefix(prefix): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "pre_logits."))}

    other = meta.get("model_name")
    if other and other != arch and not only_backbone:
        raise CheckpointError(f"{name}: is a checkpoint of model {other!r}, not {arch!r}")
    stale_head = bool(
        classes is not None and meta.get("classes") and list(meta["classes"]) != list(classes)
    )

    def group_of(key: str) -> str:
        if only_backbone or not key.startswith(("fc.", "pre_logits.")):
            return "backbone"
        return "head" if key.startswith("fc.") else "pre_logits"

    target = model.state_dict()
    report = LoadReport(source=name)
    to_load: dict[str, Tensor] = {}
    wrong_shape: list[str] = []
    for key, ours in target.items():
        group = group_of(key)
        if key not in state:
            if not key.endswith("num_batches_tracked"):
                report.missing.append(key)
            continue
        theirs = state[key]
        conv_as_linear = theirs.dim() == 4 and ours.dim() == 2  # timm's VGG fc6/fc7
        if conv_as_linear and theirs.numel() == ours.numel():
            theirs = theirs.reshape(ours.shape)
        if group == "head" and stale_head:
            report.dropped.append(f"{key} (trained on other classes)")
            continue
        if theirs.shape != ours.shape:
            what = f"{key}: {list(theirs.shape)} in the file, {list(ours.shape)} here"
            (report.dropped if group == "head" else wrong_shape).append(what)
            continue
        to_load[key] = theirs
    report.unexpected = [k for k in state if k not in target]
    if not any(group_of(k) == "backbone" for k in to_load):
        raise CheckpointError(
            f"{name}: nothing in it fits {arch}: its keys look like "
            f"{_short(list(state), 3)}; {arch} expects {_short(list(target), 3)}"
        )
    missing_backbone = [k for k in report.missing if group_of(k) == "backbone"]
    if wrong_shape or missing_backbone:
        problems = wrong_shape[:3] + [f"{k}: missing" for k in missing_backbone[:3]]
        raise CheckpointError(
            f"{name}: does not fit {arch} ({len(wrong_shape)} backbone tensors of another "
            f"shape, {len(missing_backbone)} missing: {'; '.join(problems)}); "
            f"is it a file of another architecture?"
        )

    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.head_reset = not only_backbone and not any(k.startswith("fc.") for k in to_load)
    log.info("%s: %s", arch, report.summary())
    if report.head_reset:
        log.info("%s: new classifier head, initialised at random", arch)
    return report
