"""Typed configs: defaults < --config yaml < explicit flags; unknown keys and wrong types are errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from gsanet.commands import build_parser
from gsanet.config import config_to_dict, resolve_config
from gsanet.errors import ConfigError, error_message
from gsanet.train.config import EvalConfig, TrainConfig
from gsanet.train.train_cli import build_train_parser

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


# ------------------------------------------------------------------------------------- the strict config loader
def _alias_bomb(levels: int) -> str:
    """``model_kwargs`` whose last list expands, through aliases, into ``10 ** levels`` leaves."""
    lines = ["model_kwargs:", "  a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_refused(tmp_path: Path) -> None:
    """The issue's 10^10-leaf bomb hung for an hour; aliases are refused before anything expands (shown here with a
    10^4-leaf one, which the plain safe loader reads in well under a second)."""
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(_alias_bomb(4))
    with pytest.raises(ConfigError, match=r"bomb.yaml is not valid YAML: aliases \(\*name\) are not allowed"):
        resolve_config(TrainConfig, {}, recipe)


def test_yaml_alias_bomb_in_an_experiment_recipe_refused(tmp_path: Path) -> None:
    from gsanet.experiments.cli import load_recipe

    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("epochs: &e 1\nwarmup_epochs: *e\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_recipe(recipe)


def test_yaml_duplicate_keys_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "dup.yaml"
    recipe.write_text("lr: 0.1\nepochs: 3\nmodel_kwargs: {heads: 2, heads: 4}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'heads' \(first on line 3\)"):
        resolve_config(TrainConfig, {}, recipe)
    recipe.write_text("lr: 0.1\nepochs: 3\nlr: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml is not valid YAML: duplicate key 'lr' \(first on line 1\)"):
        resolve_config(TrainConfig, {}, recipe)


def test_yaml_nesting_and_size_are_bounded(tmp_path: Path) -> None:
    from gsanet.config import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH

    recipe = tmp_path / "deep.yaml"
    recipe.write_text("model_kwargs: " + "[" * (MAX_CONFIG_DEPTH + 1) + "]" * (MAX_CONFIG_DEPTH + 1) + "\n")
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_CONFIG_DEPTH} levels"):
        resolve_config(TrainConfig, {}, recipe)
    recipe.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1) + "lr: 0.1\n")
    with pytest.raises(ConfigError, match="deep.yaml is larger than 1024 KiB"):
        resolve_config(TrainConfig, {}, recipe)


def test_config_fifo_refused_without_hanging(tmp_path: Path) -> None:
    """A FIFO given as --config used to block forever in open(); it is refused at once."""
    import os
    import threading

    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            resolve_config(TrainConfig, {}, fifo)
        except BaseException as e:  # noqa: BLE001 (handed to the test thread)
            errors.append(e)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():  # release the blocked reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=10)
        pytest.fail("loading a FIFO as a config file blocked")
    assert len(errors) == 1 and isinstance(errors[0], ConfigError), errors
    assert str(errors[0]) == f"config file {fifo} is a FIFO; give the path of a YAML file"


def test_config_invalid_utf8_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gsanet.cli import main as gsanet_main

    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert gsanet_main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    expected = f"config file {recipe} is not UTF-8 text (byte 0xe9 at offset 9); save it as UTF-8"
    assert err == f"gsanet train: error: {expected}\n"


def test_yaml_alias_bomb_in_model_kwargs_flag_refused() -> None:
    """``--model-kwargs k=<yaml>`` values go through the strict loader too: an alias bomb there is a usage error."""
    from gsanet.commands import build_parser
    from gsanet.errors import UserError

    parser = build_parser(TrainConfig, "gsanet train", "test")
    with pytest.raises(UserError, match=r"the value of x is not valid YAML: aliases"):
        parser.parse_args(["--model-kwargs", "x=[&a [1, 1], [*a, *a]]"])


def test_a_config_file_with_the_former_output_key_loads(tmp_path: Path) -> None:
    """``output`` was renamed ``out``: a stored config that says ``output`` still loads; saying both is an error."""
    old = tmp_path / "old.yaml"
    old.write_text("output: elsewhere\nepochs: 2\n")
    cfg = resolve_config(TrainConfig, {}, old)
    assert (cfg.out, cfg.epochs) == ("elsewhere", 2)
    assert resolve_config(EvalConfig, {}, None, {"output": "r"}).out == "r"
    both = tmp_path / "both.yaml"
    both.write_text("output: a\nout: b\n")
    with pytest.raises(ConfigError, match="output is the former name of out; give out only"):
        resolve_config(TrainConfig, {}, both)
