"""DDP: ``torchrun --nproc_per_node 2`` on CPU (gloo) reaches the weights of one process with the same global batch.

The model is timm's ``test_efficientnet_gn``: GroupNorm, no BatchNorm, so no per-process batch statistics (torch's
SyncBatchNorm has no CPU kernel, and ``--sync-bn`` is refused on CPU). No dropout. The augmentation is drawn per sample
index from (seed, epoch), so it is identical however the samples are spread over processes; the two shards of a
``DistributedSampler`` step together through the same permutation the single process walks. Float32 (``--amp none``):
bf16 rounding would make the two reduction orders differ by more than a tight tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gsanet.train import train_cli
from gsanet.train.checkpoint import load_checkpoint

from .test_data import write_fake_fashion_mnist

TINY = "test_efficientnet_gn"


def _args(data: Path, output: Path, name: str, batch_size: int) -> list[str]:
    return [
        "--data-dir", str(data), "--model", TINY, "--epochs", "2", "--batch-size", str(batch_size),
        "--opt", "momentum", "--lr", "0.05", "--weight-decay", "1.0e-4", "--warmup-epochs", "0",
        "--augment", "--amp", "none", "--no-progress", "--out", str(output), "--name", name, "--device", "cpu",
    ]  # fmt: skip


def test_two_processes_match_one(tmp_path: Path) -> None:
    data = write_fake_fashion_mnist(tmp_path / "data", n_train=64, n_val=20)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "gsanet.cli", "train", *_args(data, tmp_path, "ddp", batch_size=8)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 2/2") == 1, "only rank 0 prints"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_cli.main(_args(data, tmp_path, "single", batch_size=16)) == 0
    finally:
        torch.set_num_threads(threads)

    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.safetensors")
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.safetensors")
    assert ddp.meta["world_size"] == 2 and single.meta["world_size"] == 1
    assert ddp.meta["num_updates"] == single.meta["num_updates"] == 8
    for key, value in single.model_state.items():
        torch.testing.assert_close(ddp.model_state[key], value, rtol=1e-4, atol=5e-5, msg=key)
    # the sharded evaluation counts every validation image once (20 images, 10 per process)
    for a, b in zip(ddp.meta["history"], single.meta["history"], strict=True):
        assert a["val_top1"] == pytest.approx(b["val_top1"]) and a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
