"""Test helpers for the shipped weights: how the weight files are exported from a run, and their accuracy check.

They serve the tests (``tests/test_pretrained.py``, ``tests/test_train.py``) and the maintainer who exports new
weights; the package itself needs neither.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from gsanet.datasets import DATASETS
from gsanet.train.rundir import RunDir, load_model

__all__ = ["evaluate_shipped", "export_weights"]

FMNIST = DATASETS["fashion-mnist"]


def export_weights(checkpoint: str | Path, dest: str | Path, *, model_name: str | None = None) -> Path:
    """Write the model weights of a ``gsanet train`` checkpoint as a plain ``state_dict`` safetensors file.

    This is how the files in ``gsanet/weights`` are made. The weights pass the checks of
    :func:`gsanet.train.rundir.load_model` (they fit the model of the checkpoint's metadata and are finite).

    Args:
        checkpoint: A gsanet checkpoint (``.safetensors``) or run directory (its ``checkpoints/last.safetensors``).
        dest: The weight file to write (e.g. ``gsanet/weights/<model>_fmnist.safetensors``).
        model_name: Expected model name (checked against the checkpoint's).

    Raises:
        ValueError: The checkpoint holds another model.
        gsanet.errors.UserError: A missing, malformed or non-finite checkpoint.
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = RunDir(path).last
    loaded = load_model(path)
    meta = loaded.meta
    if model_name is not None and meta.model != model_name:
        raise ValueError(f"{path} holds {meta.model}, not {model_name}")
    state = {k: v.contiguous() for k, v in loaded.model.state_dict().items()}
    source = {"model": meta.model, "epoch": meta.epoch, "run_id": meta.run_id, "data": meta.data.get("name")}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dest), metadata={"format": "pt", "gsanet_source": json.dumps(source)})
    return dest


def evaluate_shipped(model: Any, limit: int | None = None, batch_size: int = 500, data_dir: str | None = None) -> float:
    """Top-1 accuracy (%) of a Fashion-MNIST model on the first ``limit`` test images (all when None).

    The inputs are prepared as ``gsanet train`` evaluates them: ``(x / 255 - mean) / std`` at 28x28, no crop.

    Raises:
        FileNotFoundError: The Fashion-MNIST idx files are not found.
    """
    from gsanet.train.data import find_fashion_mnist, idx_file, read_idx

    folder = find_fashion_mnist(data_dir)
    if folder is None:
        raise FileNotFoundError("Fashion-MNIST idx files not found (data/ or /usr/share/datasets/fashion-mnist)")
    images = read_idx(idx_file(folder, "t10k-images-idx3-ubyte"))[:limit]
    labels = read_idx(idx_file(folder, "t10k-labels-idx1-ubyte"))[:limit].long()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].unsqueeze(1).float() / 255.0
            x = (x - FMNIST.mean[0]) / FMNIST.std[0]
            correct += int((model(x).argmax(-1) == labels[i : i + batch_size]).sum())
    return 100.0 * correct / len(images)
