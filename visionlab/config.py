"""Typed training recipes: dataclass configs, YAML load and ``key=value`` overrides.

A recipe is a YAML file whose keys mirror :class:`Config`; every key has a default, so a
recipe names only what differs. Overrides on the command line use dotted keys and Python
literals (parsed with :func:`ast.literal_eval`, never ``eval``; anything that is not a
literal stays a string)::

    visionlab train configs/classify_scenes.yaml train.epochs=3 optim.lr=0.05 out=runs/x

Schema (defaults in brackets)::

    name: str            run name [recipe file stem]; the run lives in runs/<name>/
    out: str             run directory, overrides runs/<name> [""]
    task: str            classification | segmentation | detection | instance [classification]
    model: str           registered model name (visionlab models) [tiny_cnn]
    model_args: dict     keyword arguments of the model builder [{}]; `num_classes` is filled
                         in from the dataset when absent
    data: str            dataset path in any supported format, or "scenes" (built-in) [scenes]
    train_split: str     [train]
    val_split: str       split evaluated during and after training ("" = none) [val]
    image_size: int|None images are resized to this (None = keep) [64]
    seed: int            seeds python, numpy and torch; data order and augmentation [0]
    device: str          auto | cpu | cuda | cuda:N (auto = CUDA when present) [auto]
    deterministic: bool  torch.use_deterministic_algorithms (warn-only) [false]
    num_workers: int     DataLoader workers [0]
    cache: str           none | ram: keep decoded images in memory after their first read
                         (float32, 12 bytes a pixel; with num_workers > 0 each worker's
                         cache lasts one epoch, so ram helps most with num_workers=0) [none]
    optim:
      name: str          sgd | adamw [sgd]
      lr: float          base learning rate for a batch of train.batch_size [0.01]
      momentum: float    SGD momentum [0.9]
      nesterov: bool     SGD Nesterov momentum [false]
      betas: list        AdamW betas [[0.9, 0.999]]
      weight_decay: float  applied to weights only, never to norm or bias parameters [1e-4]
      backbone_lr_mult: float  lr multiplier of model.backbone_parameters() [1.0]
    schedule:
      name: str          cosine | step | constant [cosine]
      warmup_steps: int  linear warm-up from warmup_factor * lr to lr [0]
      warmup_factor: float [0.001]
      milestones: list   epochs at which `step` multiplies the lr by gamma [[]]
      gamma: float       [0.1]
      min_lr_factor: float  cosine ends at min_lr_factor * lr [0.0]
    train:
      epochs: int        [10]
      max_steps: int|None  optimizer steps in the whole run (overrides epochs) [None]
      stop_at_step: int|None  stop early after this step, saving last.pt, as if interrupted;
                         `--resume` continues the same schedule [None]
      batch_size: int    global batch (summed over processes) per forward pass [32]
      accumulate: int    forward passes per optimizer step (effective batch = batch_size *
                         accumulate) [1]
      grad_clip: float|None  max global L2 norm of the gradients [None]
      amp: str           none | bf16 | fp16 (fp16 needs CUDA; uses a GradScaler) [none]
      label_smoothing: float  classification cross-entropy label smoothing [0.0]
      eval_every: int    evaluate every N epochs (0 = only at the end) [1]
      log_every: int     write metrics.jsonl / TensorBoard every N steps [10]
      save_every: int    also save last.pt every N steps (0 = at epoch ends only) [0]
      progress: bool     show a tqdm progress bar [true]
    augment: dict        keyword arguments of visionlab.data.transforms.build_transforms for
                         the training split, e.g. {hflip: 0.5} [{}]
    transfer:
      pretrained: str|None  a whole model of the same kind to start from (classifiers,
                         FCNs): checkpoint (.pt), exported dir or .safetensors; null (or
                         "") = none. The classifier head is reset when the class count
                         differs. A backbone's initial weights are the model's
                         `model_args.pretrained_backbone`, the one knob for those [None]
      freeze: str        none | backbone [none]
      unfreeze_after: int|None  epochs after which a frozen backbone is trained too [None]

Unknown keys are rejected with a did-you-mean (:class:`visionlab.errors.ConfigError`) and
every value is checked against its field's type.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionlab.constants import TASKS
from visionlab.errors import ConfigError


@dataclass
class OptimConfig:
    """Optimizer: SGD (momentum, Nesterov) or AdamW; decoupled from the schedule."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    backbone_lr_mult: float = 1.0


@dataclass
class ScheduleConfig:
    """Per-step learning-rate multiplier: linear warm-up, then cosine, step or constant."""

    name: str = "cosine"
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr_factor: float = 0.0


@dataclass
class TrainConfig:
    """Loop length, batch, precision and the cadence of logging, evaluation and saving."""

    epochs: int = 10
    max_steps: int | None = None
    stop_at_step: int | None = None
    batch_size: int = 32
    accumulate: int = 1
    grad_clip: float | None = None
    amp: str = "none"
    label_smoothing: float = 0.0
    eval_every: int = 1
    log_every: int = 10
    save_every: int = 0
    progress: bool = True


@dataclass
class TransferConfig:
    """Start from trained weights, optionally with a frozen backbone for some epochs."""

    pretrained: str | None = None
    freeze: str = "none"
    unfreeze_after: int | None = None


@dataclass
class Config:
    """A whole training recipe; see the module docstring for every key."""

    name: str = ""
    out: str = ""
    task: str = "classification"
    model: str = "tiny_cnn"
    model_args: dict[str, Any] = field(default_factory=dict)
    data: str = "scenes"
    train_split: str = "train"
    val_split: str = "val"
    image_size: int | None = 64
    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    num_workers: int = 0
    cache: str = "none"
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: dict[str, Any] = field(default_factory=dict)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML- and checkpoint-safe)."""
        return dataclasses.asdict(self)

    def run_dir(self) -> Path:
        """Where the run lives: ``out`` when given, else ``runs/<name>``."""
        return Path(self.out) if self.out else Path("runs") / (self.name or "run")


# --------------------------------------------------------------------------- type checks


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


class _BadValue(ConfigError):
    """The value has the field's type but is not allowed (NaN): no other type of a union
    is tried, so the message says what is wrong with it."""


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float, list <-> tuple) or raise.

    Floats must be finite: YAML's ``.nan`` / ``.inf`` (or ``1e999``) would train NaN weights.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_value(value, option, key)
            except _BadValue:
                raise
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_check_value(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float range
                number = math.inf if value > 0 else -math.inf
            if not math.isfinite(number):
                raise _BadValue(f"{key}: must be a finite number, got {number}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        raise ConfigError(f"{key}: is a section; set its keys ({key}.KEY=VALUE)")
    else:  # pragma: no cover - a field type this module does not know
        raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _all_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the schema: ``name``, ``train.epochs``, ..."""
    cls = cls or Config
    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += _all_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _unknown_key(key: str, known: list[str], where: str) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    close = [prefix + c for c in difflib.get_close_matches(leaf, known, n=1)]
    if not close:  # a key of another section, e.g. `lr` for `optim.lr`
        elsewhere = {k.rsplit(".", 1)[-1]: k for k in _all_keys()}
        close = [elsewhere[c] for c in difflib.get_close_matches(leaf, list(elsewhere), n=1)]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}unknown key {key!r}{hint}; known: {', '.join(sorted(known))}")


def _apply_mapping(obj: Any, mapping: dict[str, Any], prefix: str, where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise _unknown_key(full, names, where)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{full}: expected a mapping of {tp.__name__} keys")
            _apply_mapping(getattr(obj, key), value, f"{full}.", where)
        else:
            try:
                setattr(obj, key, _check_value(value, tp, full))
            except ConfigError as err:
                raise ConfigError(f"{where}{err}") from None


def parse_value(text: str) -> Any:
    """A command-line value: a Python literal when it is one, else the text itself.

    Uses :func:`ast.literal_eval`, which builds literals only and never runs code, so
    ``__import__('os').system('...')`` stays a string.
    """
    text = text.strip()
    lowered = text.lower()
    if lowered in {"true", "false"}:  # YAML spelling of the booleans
        return lowered == "true"
    if lowered in {"null", "~"}:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``key=value`` strings (dotted keys: ``train.epochs=3``) to ``cfg`` in place.

    ``model_args.KEY=VALUE`` and ``augment.KEY=VALUE`` set one entry of those mappings.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or not all(parts):
            raise ConfigError(f"override {item!r}: empty key")
        value = parse_value(text)
        hints = typing.get_type_hints(Config)
        # A mapping field takes `field.subkey=value`.
        if len(parts) >= 2 and parts[0] in hints and typing.get_origin(hints[parts[0]]) is dict:
            target = getattr(cfg, parts[0])
            for p in parts[1:-1]:
                target = target.setdefault(p, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"override {item!r}: {p!r} is not a mapping")
            target[parts[-1]] = value
            continue
        nested: dict[str, Any] = value  # build {"a": {"b": value}} from "a.b"
        for p in reversed(parts):
            nested = {p: nested}
        _apply_mapping(cfg, nested, "", "override: ")
    validate(cfg)
    return cfg


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}{hint}")


def validate(cfg: Config) -> Config:
    """Check the values that types alone do not (choices and ranges); ``""`` as
    ``transfer.pretrained`` becomes None (both say "no weights file")."""
    if cfg.transfer.pretrained == "":
        cfg.transfer.pretrained = None
    _choice(cfg.task, TASKS, "task")
    _choice(cfg.optim.name, ("sgd", "adamw"), "optim.name")
    _choice(cfg.schedule.name, ("cosine", "step", "constant"), "schedule.name")
    _choice(cfg.train.amp, ("none", "bf16", "fp16"), "train.amp")
    _choice(cfg.transfer.freeze, ("none", "backbone"), "transfer.freeze")
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "train.accumulate": cfg.train.accumulate,
        "train.log_every": cfg.train.log_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    non_negative = {
        "train.epochs": cfg.train.epochs,
        "train.eval_every": cfg.train.eval_every,
        "train.save_every": cfg.train.save_every,
        "schedule.warmup_steps": cfg.schedule.warmup_steps,
        "num_workers": cfg.num_workers,
        "optim.lr": cfg.optim.lr,
        "optim.weight_decay": cfg.optim.weight_decay,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    if cfg.cache not in ("none", "ram"):
        raise ConfigError(f"cache: expected 'none' or 'ram', got {cfg.cache!r}")
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        raise ConfigError(f"train.max_steps: must be >= 1, got {cfg.train.max_steps}")
    if cfg.train.stop_at_step is not None and cfg.train.stop_at_step < 1:
        raise ConfigError(f"train.stop_at_step: must be >= 1, got {cfg.train.stop_at_step}")
    if not 0.0 <= cfg.train.label_smoothing < 1.0:
        raise ConfigError("train.label_smoothing: must be in [0, 1)")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas: expected two numbers, got {cfg.optim.betas}")
    if cfg.image_size is not None and cfg.image_size < 1:
        raise ConfigError(f"image_size: must be >= 1, got {cfg.image_size}")
    if cfg.device != "auto" and not (
        cfg.device in ("cpu", "cuda", "mps") or cfg.device.startswith("cuda:")
    ):
        raise ConfigError(f"device: {cfg.device!r} is not auto, cpu, cuda or cuda:N")
    return cfg


def from_dict(data: dict[str, Any], *, where: str = "") -> Config:
    """Build a :class:`Config` from a nested mapping (unknown keys are errors)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}a recipe must be a mapping of keys, got {type(data).__name__}")
    cfg = Config()
    _apply_mapping(cfg, data, "", where)
    return validate(cfg)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (``None`` = all defaults) and apply ``key=value`` overrides.

    The run name defaults to the recipe's file stem.
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such recipe file")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({err.__class__.__name__})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file") from None
        data = loaded if loaded is not None else {}
    cfg = from_dict(data, where=f"{path}: " if path is not None else "")
    if not cfg.name and path is not None:
        cfg.name = Path(path).stem
    return apply_overrides(cfg, list(overrides))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved recipe as YAML (loads back with :func:`load_config`)."""
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
