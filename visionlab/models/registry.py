"""The model registry: ``@register_model`` builders, ``build_model(name, **kwargs)``,
``list_models(pattern)`` and ``model_info(name)`` (the timm factory, in miniature).

Builders register themselves when their module is imported; the first time a name is
listed or built, every module of :mod:`visionlab.models` is imported, in sorted order (an
import error surfaces: a model is never silently missing).

Every built model carries ``model.task`` and ``model.build_args``, plain data ``{"name":
NAME, **kwargs}`` with the defaults filled in and the weight sources left out, so
``build_model(**model.build_args)`` rebuilds the architecture. ``renamed_args={old: new}``
makes :func:`build_model` refuse an old name naming the new one; checkpoints' stored
``model_args`` are renamed on load (:func:`visionlab.models.postprocess.upgrade_model_args`).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from visionlab.errors import VisionLabError

# The package whose modules are imported for their @register_model builders.
MODELS_PACKAGE = "visionlab.models"

# Builder keyword arguments that say where initial weights come from, not what the model
# is; they are left out of ``build_args`` (a checkpoint already holds the weights).
WEIGHT_SOURCE_KWARGS: tuple[str, ...] = ("pretrained", "pretrained_backbone")


@dataclass(frozen=True)
class ModelInfo:
    """What ``visionlab models`` shows about one registered model.

    Attributes:
        name: registry name, the ``model:`` key of a recipe.
        task: ``classification`` | ``detection`` | ``segmentation`` | ``instance`` | ...
        summary: one line.
        args: the builder's keyword arguments and their defaults.
        module: the module that defines the builder.
    """

    name: str
    task: str
    summary: str
    args: dict[str, Any] = field(default_factory=dict)
    module: str = ""


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    builder: Callable[..., nn.Module]
    signature: inspect.Signature
    renamed_args: dict[str, str] = field(default_factory=dict)


_REGISTRY: dict[str, _Entry] = {}
_imported: list[str] = []  # the modules discovery imported, in import order
_discovered = False  # every module imported (an import error leaves it False: retried)


def register_model(
    name: str, *, task: str, summary: str, renamed_args: Mapping[str, str] | None = None
) -> Callable:
    """Decorator that registers a builder function under ``name``.

    The builder takes keyword arguments only and returns an ``nn.Module``. Registering a
    name twice is an error. ``renamed_args`` maps former argument names to current ones.

    Example::

        @register_model("tiny_cnn", task="classification", summary="fast CPU CNN")
        def tiny_cnn(*, num_classes: int = 1000) -> nn.Module: ...
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(f"model {name!r} is registered twice ({builder.__module__})")
        signature = inspect.signature(builder)
        args = {
            p.name: p.default
            for p in signature.parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }
        renamed = dict(renamed_args or {})
        bad = {old: new for old, new in renamed.items() if old in args or new not in args}
        if bad:
            raise ValueError(f"model {name!r}: renamed_args {bad} must map old names to arguments")
        info = ModelInfo(name, task, summary, args, builder.__module__)
        _REGISTRY[name] = _Entry(info, builder, signature, renamed)
        return builder

    return decorator


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _package_modules(package: str) -> list[str]:
    """Sorted names of every module of ``package`` and of its sub-packages (each
    sub-package is imported to find its modules)."""
    path = importlib.import_module(package).__path__
    names = []
    for info in pkgutil.iter_modules(path, prefix=f"{package}."):
        names.append(info.name)
        if info.ispkg:
            names += _package_modules(info.name)
    return sorted(names)


def _import_package(package: str, imported: list[str]) -> None:
    """Import every module of ``package`` not yet in ``imported``, in sorted order, and
    append it there. Errors propagate: a module that fails to import is not skipped."""
    for module in _package_modules(package):
        if module not in imported:
            importlib.import_module(module)
            imported.append(module)


def _import_model_modules() -> None:
    global _discovered
    if not _discovered:
        _import_package(MODELS_PACKAGE, _imported)
        _discovered = True


def _entry(name: str) -> _Entry:
    _import_model_modules()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise VisionLabError(
            f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; `visionlab models` lists the "
            f"{len(_REGISTRY)} registered models"
        )
    return _REGISTRY[name]


def _plain(value: Any) -> Any:
    """Tuples become lists so that ``build_args`` is YAML-, JSON- and checkpoint-safe."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def renamed_args(name: str) -> dict[str, str]:
    """The former argument names of model ``name`` and their current names."""
    return dict(_entry(name).renamed_args)


def _refuse_old_names(name: str, entry: _Entry, kwargs: dict[str, Any]) -> None:
    for old in kwargs:
        if old in entry.renamed_args:
            raise VisionLabError(
                f"model {name!r} has no argument {old!r} (did you mean "
                f"{entry.renamed_args[old]!r}? it was renamed)"
            )


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments ``kwargs``.

    Args:
        name: a name from :func:`list_models`.
        **kwargs: the builder's keyword arguments (``visionlab models --json`` lists them).

    Returns:
        The model, with ``.task`` and ``.build_args`` set.

    Raises:
        VisionLabError: unknown model or keyword argument (with a did-you-mean; a former
            name of a renamed argument names the current one).
    """
    entry = _entry(name)
    _refuse_old_names(name, entry, kwargs)
    accepted = entry.info.args
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise VisionLabError(
            f"model {name!r} has no argument {unknown[0]!r}{did_you_mean(unknown[0], accepted)}"
            "; its arguments: " + ", ".join(f"{k}={v!r}" for k, v in accepted.items())
        )
    try:
        bound = entry.signature.bind(**kwargs)
    except TypeError as err:
        raise VisionLabError(f"model {name!r}: {err}") from None
    bound.apply_defaults()
    model = entry.builder(**kwargs)
    model.task = entry.info.task
    recorded = {k: v for k, v in bound.arguments.items() if k not in WEIGHT_SOURCE_KWARGS}
    model.build_args = _plain({"name": name, **recorded})
    return model


def list_models(pattern: str = "*", *, task: str | None = None) -> list[str]:
    """Sorted names of the registered models matching ``pattern`` (fnmatch) and ``task``."""
    _import_model_modules()
    names = [n for n in sorted(_REGISTRY) if fnmatch.fnmatchcase(n, pattern)]
    if task is not None:
        names = [n for n in names if _REGISTRY[n].info.task == task]
    return names


def model_info(name: str) -> ModelInfo:
    """Task, one-line summary and builder arguments of the registered model ``name``."""
    return _entry(name).info


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered model (imports the model modules first)."""
    _import_model_modules()
    return name in _REGISTRY
