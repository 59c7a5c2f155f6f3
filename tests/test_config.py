"""Typed configs: defaults < --config yaml < explicit flags; unknown keys and wrong types are errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from gsanet.train.cli import build_train_parser
from gsanet.train.config import (
    ConfigError,
    EvalConfig,
    TrainConfig,
    build_parser,
    config_to_dict,
    error_message,
    resolve_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _explicit(argv: list[str]) -> tuple[dict, str | None]:
    args = vars(build_train_parser().parse_args(argv))
    config = args.pop("config", None)
    args.pop("resume", None)
    args.pop("stop_after", None)
    return args, config


def test_defaults_are_the_fashion_mnist_recipe() -> None:
    recipe = yaml.safe_load((CONFIGS / "fashion_mnist.yaml").read_text())
    assert set(recipe) == {f.name for f in dataclasses.fields(TrainConfig)}, "the recipe lists every key"
    assert resolve_config(TrainConfig, {}, CONFIGS / "fashion_mnist.yaml") == TrainConfig()
    assert TrainConfig().model == "gsa_resnet26_tiny"


@pytest.mark.parametrize("name", ["fashion_mnist.yaml", "cifar100.yaml", "imagenet.yaml"])
def test_recipes_load(name: str) -> None:
    cfg = resolve_config(TrainConfig, {}, CONFIGS / name)
    assert isinstance(cfg, TrainConfig)


def test_precedence_defaults_yaml_flags(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 0.5\nepochs: 3\nmodel_kwargs: {width: 2}\n")
    explicit, config = _explicit(["--config", str(recipe), "--lr", "0.1", "--no-augment"])
    cfg = resolve_config(TrainConfig, explicit, config)
    assert cfg.lr == 0.1  # flag beats yaml
    assert cfg.epochs == 3  # yaml beats default
    assert cfg.model_kwargs == {"width": 2}
    assert cfg.augment is False
    assert cfg.batch_size == TrainConfig().batch_size  # default
    # a base (the config of a resumed checkpoint) sits between the defaults and the yaml
    cfg = resolve_config(TrainConfig, {"lr": 0.2}, recipe, base={"epochs": 9, "seed": 7})
    assert (cfg.lr, cfg.epochs, cfg.seed) == (0.2, 3, 7)


def test_flag_parsing() -> None:
    explicit, _ = _explicit(["--model-kwargs", "heads=4", "pos_span=[7, 7]", "--clip-grad", "none", "--img-size", "32"])
    cfg = resolve_config(TrainConfig, explicit)
    assert cfg.model_kwargs == {"heads": 4, "pos_span": [7, 7]}
    assert cfg.clip_grad is None and cfg.img_size == 32


def test_unknown_key_is_an_error_listing_valid_keys(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("lr: 0.1\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        resolve_config(TrainConfig, {}, recipe)
    message = str(info.value)
    assert "learning_rate" in message and "valid keys" in message
    assert all(f.name in message for f in dataclasses.fields(TrainConfig))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("epochs: ten", "epochs must be int"),
        ("epochs: 2.5", "epochs must be int"),
        ("lr: 1e-3", "write 1.0e-3"),
        ("augment: 1", "augment must be bool"),
        ("model_kwargs: [1, 2]", "model_kwargs must be mapping"),
        ("clip_grad: fast", "clip_grad must be float or null"),
        ("epochs: 0", "epochs must be >= 1"),
        ("amp: fp8", "amp must be one of"),
        ("- a\n- b", "must hold a mapping"),
        ("lr: [", "not valid YAML"),
    ],
)
def test_wrong_types_are_errors(tmp_path: Path, text: str, fragment: str) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text + "\n")
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        resolve_config(TrainConfig, {}, recipe)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve_config(TrainConfig, {}, tmp_path / "nope.yaml")


def test_ints_are_valid_floats() -> None:
    cfg = resolve_config(TrainConfig, {"lr": 1, "weight_decay": 0})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_eval_config() -> None:
    args = vars(build_parser(EvalConfig, "gsanet eval", "").parse_args(["--checkpoint", "x", "--no-ema"]))
    cfg = resolve_config(EvalConfig, args)
    assert cfg.checkpoint == "x" and cfg.ema is False
    with pytest.raises(ConfigError, match="valid keys"):
        resolve_config(EvalConfig, {"epochs": 3})


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = TrainConfig(lr=0.3, model_kwargs={"a": [1, 2]}, name="x")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert resolve_config(TrainConfig, {}, path) == cfg


def test_error_message_strips_worker_traceback() -> None:
    wrapped = ConfigError(
        "Caught ConfigError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1\ngsanet.train.config.ConfigError: the real message'
    )
    assert error_message(wrapped) == "the real message"
