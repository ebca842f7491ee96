"""Recipes: YAML load, key=value overrides, type checks, did-you-mean, literal_eval safety."""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path

import pytest

from visionlab.config import (
    Config,
    _all_keys,
    apply_overrides,
    from_dict,
    load_config,
    parse_value,
    save_config,
)
from visionlab.errors import ConfigError


def test_defaults_and_recipe_name(tmp_path: Path) -> None:
    recipe = tmp_path / "my_recipe.yaml"
    recipe.write_text("model: resnet18\ntrain:\n  epochs: 7\noptim:\n  lr: 1\n")
    cfg = load_config(recipe)
    assert cfg.name == "my_recipe"
    assert cfg.model == "resnet18"
    assert cfg.train.epochs == 7
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # int accepted for float
    assert cfg.train.batch_size == Config().train.batch_size
    assert cfg.run_dir() == Path("runs/my_recipe")
    assert load_config(recipe, ["out=elsewhere"]).run_dir() == Path("elsewhere")


def test_dotted_overrides_and_literals() -> None:
    cfg = apply_overrides(
        Config(),
        [
            "train.epochs=3",
            "optim.name=adamw",
            "schedule.milestones=[2, 4]",
            "train.grad_clip=1.5",
            "train.max_steps=None",
            "model_args.width=8",
            "augment.scale_jitter=(0.9, 1.1)",
            "deterministic=true",
            "image_size=null",
            "data=path/to/data",
        ],
    )
    assert cfg.train.epochs == 3
    assert cfg.optim.name == "adamw"
    assert cfg.schedule.milestones == [2, 4]
    assert cfg.train.grad_clip == 1.5
    assert cfg.train.max_steps is None
    assert cfg.model_args == {"width": 8}
    assert cfg.augment == {"scale_jitter": (0.9, 1.1)}
    assert cfg.deterministic is True
    assert cfg.image_size is None
    assert cfg.data == "path/to/data"


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("train.epoch=3", "did you mean 'train.epochs'"),
        ("trian.epochs=3", "did you mean 'train'"),
        ("lr=0.1", "did you mean 'optim.lr'"),
        ("train.lr=0.1", "did you mean 'optim.lr'"),
    ],
)
def test_unknown_keys_suggest(override: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=hint):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=3.5", "train.epochs: expected int"),
        ("train.epochs=true", "train.epochs: expected int"),
        ("optim.lr=fast", "optim.lr: expected float"),
        ("optim=3", "expected a mapping"),
        ("schedule.milestones=3", "expected a list"),
        ("train.amp=fp32", "not one of none, bf16, fp16"),
        ("optim.name=adam", "did you mean 'adamw'"),
        ("train.batch_size=0", "must be >= 1"),
        ("epochs", "is not KEY=VALUE"),
        ("=3", "empty key"),
    ],
)
def test_bad_values_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("optim:\n  lr: .nan\n", "optim.lr: must be a finite number, got nan"),
        ("optim:\n  lr: .inf\n", "optim.lr: must be a finite number, got inf"),
        ("schedule:\n  gamma: -.inf\n", "schedule.gamma: must be a finite number, got -inf"),
        ("train:\n  grad_clip: .NaN\n", "train.grad_clip: must be a finite number, got nan"),
        ("optim:\n  betas: [0.9, .nan]\n", r"optim.betas\[1\]: must be a finite number"),
        ("optim:\n  lr: 1" + "0" * 400 + "\n", "optim.lr: must be a finite number, got inf"),
    ],
    ids=["nan", "inf", "-inf", "union", "list", "int-beyond-float"],
)
def test_recipes_refuse_nan_and_infinity(tmp_path: Path, yaml_text: str, message: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml_text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(recipe))}: {message}"):
        load_config(recipe)


def _float_keys() -> dict[str, typing.Any]:
    """Every key of the schema whose type takes a float, with that type."""
    found = {}
    for key in _all_keys():
        owner: typing.Any = Config
        *sections, leaf = key.split(".")
        for section in sections:
            owner = typing.get_type_hints(owner)[section]
        tp = typing.get_type_hints(owner)[leaf]
        if tp is float or float in typing.get_args(tp):
            found[key] = tp
    return found


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_field_refuses_non_finite_values(value: float) -> None:
    keys = _float_keys()
    assert {"optim.lr", "optim.betas", "train.grad_clip", "schedule.min_lr_factor"} <= set(keys)
    for key, tp in keys.items():
        data: typing.Any = [value, value] if typing.get_origin(tp) is list else value
        for part in reversed(key.split(".")):
            data = {part: data}
        index = "[0]" if typing.get_origin(tp) is list else ""
        expected = f"{key}{index}: must be a finite number, got {value}"
        with pytest.raises(ConfigError) as err:
            from_dict(data)
        assert str(err.value) == expected


@pytest.mark.parametrize(  # 1e999 is a float literal: inf
    ("override", "message"),
    [
        ("optim.lr=1e999", "optim.lr: must be a finite number, got inf"),
        ("train.grad_clip=-1e999", "train.grad_clip: must be a finite number, got -inf"),
        ("optim.betas=[0.9, 1e999]", r"optim.betas\[1\]: must be a finite number, got inf"),
    ],
)
def test_overrides_refuse_infinity(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^override: {message}$"):
        apply_overrides(Config(), [override])


def test_values_are_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    assert parse_value(code) == code  # not a literal: stays text
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("1e-3") == 0.001
    cfg = apply_overrides(Config(), [f"name={code}"])
    assert cfg.name == code
    with pytest.raises(ConfigError, match="unknown key 'x'"):
        apply_overrides(Config(), [f"x={code}"])
    with pytest.raises(ConfigError):
        apply_overrides(Config(), [f"train.epochs={code}"])
    assert not marker.exists()


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such recipe"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key 'train.epocs'.*'train.epochs'"):
        load_config(typo)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)
    assert not marker.exists()


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    cfg = apply_overrides(
        Config(), ["name=x", "train.epochs=2", "model_args.width=4", "schedule.milestones=[1]"]
    )
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    "yaml_text",
    ["transfer:\n  pretrained: null\n", "transfer:\n  pretrained: ''\n", "transfer: {}\n"],
)
def test_transfer_pretrained_none_is_null(tmp_path: Path, yaml_text: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml_text)
    assert Config().transfer.pretrained is None
    assert load_config(recipe).transfer.pretrained is None
    for value in ("null", "None", "''", ""):
        assert load_config(recipe, [f"transfer.pretrained={value}"]).transfer.pretrained is None
    path = "runs/x/checkpoints/best.pt"
    cfg = load_config(recipe, [f"transfer.pretrained={path}"])
    assert cfg.transfer.pretrained == path
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    with pytest.raises(ConfigError, match=r"transfer\.pretrained: expected"):
        load_config(recipe, ["transfer.pretrained=3"])


@pytest.mark.parametrize("recipe", sorted(Path(__file__).parents[1].glob("configs/*.yaml")))
def test_recipes_load(recipe: Path) -> None:
    cfg = load_config(recipe)
    assert cfg.transfer.pretrained != ""
    assert cfg.model_args.get("pretrained_backbone", None) != ""
