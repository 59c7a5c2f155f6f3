"""Checkpoints: safetensors + JSON only, exact round trip of the training state, atomic writes, ownership checks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from gsanet.errors import CheckpointError, ConfigError
from gsanet.train import checkpoint as ckpt_mod
from gsanet.train.checkpoint import (
    capture_rng_state,
    check_state_dict,
    copy_checkpoint,
    load_checkpoint,
    pack_state,
    read_metadata,
    restore_rng_state,
    save_checkpoint,
    unpack_state,
)


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    for _ in range(3):
        model(torch.randn(2, 1, 8, 8)).sum().backward()
        optimizer.step()
    return model, optimizer


def test_pack_unpack_is_exact() -> None:
    _, optimizer = _trained()
    state = {"optimizer": optimizer.state_dict(), "tuple": (1, 2.5, "x"), "ints": {3: "a"}, "none": None, "x": [1.0]}
    tensors: dict[str, torch.Tensor] = {}
    packed = pack_state(state, tensors)
    json.dumps(packed)  # JSON only
    back = unpack_state(json.loads(json.dumps(packed)), tensors)
    assert back["tuple"] == (1, 2.5, "x") and back["ints"] == {3: "a"} and back["none"] is None
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    for key, value in state["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(back["optimizer"]["state"][key][name], tensor)
    with pytest.raises(TypeError, match="cannot store"):
        pack_state({"f": object()}, {})


def test_save_load_round_trip_without_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer = _trained()
    path = tmp_path / "last.safetensors"
    meta = {"run_id": "r1", "model": "toy", "epoch": 3}
    save_checkpoint(
        path, meta, model.state_dict(), ema_state=model.state_dict(), state={"optimizer": optimizer.state_dict()}
    )
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temp file left

    def no_torch_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must never be used")

    monkeypatch.setattr(torch, "load", no_torch_load)
    loaded = load_checkpoint(path)
    assert loaded.meta["epoch"] == 3 and loaded.meta["run_id"] == "r1"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model_state[key], value) and torch.equal(loaded.ema_state[key], value)
    fresh_model, _ = _trained()
    fresh = torch.optim.AdamW(fresh_model.parameters(), lr=0.5)
    fresh.load_state_dict(loaded.state["optimizer"])
    assert fresh.param_groups[0]["lr"] == 1e-3 and fresh.param_groups[0]["betas"] == (0.8, 0.95)
    # a plain safetensors reader sees the weights and the JSON metadata
    tensors = safetensors.torch.load_file(path)
    assert torch.equal(tensors["model.0.weight"], model.state_dict()["0.weight"])
    assert load_checkpoint(path, with_state=False).ema_state is None


def test_rng_state_round_trip(tmp_path: Path) -> None:
    random.random(), np.random.rand(), torch.rand(1)
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    tensors: dict[str, torch.Tensor] = {}
    packed = json.loads(json.dumps(pack_state(state, tensors)))
    path = tmp_path / "rng.safetensors"
    save_checkpoint(path, {"run_id": "r"}, {}, state={"rng": state})
    restore_rng_state(load_checkpoint(path).state["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    restore_rng_state(unpack_state(packed, tensors))
    assert random.random() == expected[0]


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _trained()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"run_id": "r", "epoch": 1}, model.state_dict())

    def crash(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"run_id": "r", "epoch": 2}, model.state_dict())
    assert load_checkpoint(path).meta["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_never_overwrites_another_runs_checkpoint(tmp_path: Path) -> None:
    model, _ = _trained()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"run_id": "mine"}, model.state_dict())
    save_checkpoint(path, {"run_id": "mine", "epoch": 2}, model.state_dict())  # same run: fine
    with pytest.raises(CheckpointError, match="another run"):
        save_checkpoint(path, {"run_id": "other"}, model.state_dict())
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, {"run_id": "other"}, model.state_dict())
    with pytest.raises(CheckpointError, match="another run"):
        copy_checkpoint(other, path)
    copy_checkpoint(path, tmp_path / "best.safetensors")
    assert read_metadata(tmp_path / "best.safetensors")["run_id"] == "mine"
    stranger = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(1)}, stranger)
    with pytest.raises(CheckpointError, match="another run"):
        save_checkpoint(stranger, {"run_id": "mine"}, model.state_dict())


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "garbage.safetensors")
    safetensors.torch.save_file({"w": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="no gsanet metadata"):
        load_checkpoint(tmp_path / "plain.safetensors")


def test_check_state_dict() -> None:
    model, _ = _trained()
    state = model.state_dict()
    check_state_dict(state, state, model_name="a", checkpoint_model="a", path="x")
    with pytest.raises(CheckpointError, match="holds a b model, not a; pass --model b"):
        check_state_dict(state, state, model_name="a", checkpoint_model="b", path="x")
    other = nn.Sequential(nn.Conv2d(1, 5, 3), nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(5 * 6 * 6, 3)).state_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatch: 0.weight \(5, 1, 3, 3\) vs \(4, 1, 3, 3\)"):
        check_state_dict(state, other, model_name="a", checkpoint_model="a", path="x")
    partial = {k: v for k, v in state.items() if not k.startswith("3.")}
    with pytest.raises(CheckpointError, match="missing: 3.weight, 3.bias"):
        check_state_dict(state, partial, model_name="a", checkpoint_model=None, path="x")


def test_the_metadata_types_validate_themselves() -> None:
    """CheckpointMeta and RunSummary own their schema: a malformed field is refused by the type, whoever reads it."""
    from gsanet.train.metadata import CheckpointMeta, RunSummary

    good = CheckpointMeta.from_dict({"run_id": "r", "epoch": 3, "unknown": object()}, "x", ("run_id",))
    assert (good.run_id, good.epoch) == ("r", 3)
    for bad in ({"epoch": -1}, {"epoch": True}, {"best": {"epoch": 1}}, {"config": {"output": "a", "out": "b"}}):
        with pytest.raises((CheckpointError, ConfigError)):
            CheckpointMeta.from_dict(bad, "x")
    with pytest.raises(CheckpointError, match="lacks the metadata model"):
        CheckpointMeta.from_dict({"run_id": "r"}, "x", ("model",))
    assert CheckpointMeta.from_dict({"config": {"output": "runs"}}, "x").config == {"out": "runs"}
    summary = RunSummary.from_dict({"val_top1": 91, "epochs": 2, "epochs_planned": 2, "plots": {"loss": "l.png"}})
    assert summary.val_top1 == 91 and summary.finished is True and summary.plots == {"loss": "l.png"}
    for key, value in (("epochs", "2"), ("finished", 1), ("val_top1", True), ("plots", ["l.png"])):
        with pytest.raises(CheckpointError, match=f"malformed {key}"):
            RunSummary.from_dict({key: value})
