"""Weights shipped with gsanet (``gsanet/weights/*.safetensors``) and how timm loads them offline.

Each entry of :data:`SHIPPED` records, next to the weight file, what the weights expect (dataset, classes, channels,
input size, normalisation), the accuracy they were measured at, and the commands that produced them
(torchvision's weights ``meta``). The files hold the model's ``state_dict`` only (float32, no training state).

:func:`shipped_overlay` turns an entry into a timm ``pretrained_cfg_overlay`` whose ``file`` points at the local
weights, so that::

    timm.create_model("gsa_resnet26_tiny", pretrained=True, pretrained_cfg_overlay=shipped_overlay("gsa_resnet26_tiny"))

builds the 10-class, 1-channel, 28x28 Fashion-MNIST model and loads the weights without any download (timm resolves a
``file`` source before any hub or URL, ``timm.models._builder._resolve_pretrained_source``; ``num_classes`` and the
channel count of ``input_size`` become the model's defaults, ``_update_default_model_kwargs``; a non-empty source
resets ``custom_load`` to False). The registered entrypoints apply the overlay themselves when ``pretrained=True``
(``gsanet/models/gsa_resnet.py``), so ``timm.create_model(name, pretrained=True)`` is enough there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SHIPPED", "WEIGHTS_DIR", "ShippedWeights", "shipped_overlay", "shipped_path"]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
"""Where the shipped ``.safetensors`` files live (installed as package data)."""

_FMNIST_MEAN = (0.2860,)
_FMNIST_STD = (0.3530,)
_FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_EXPERIMENT = "gsanet experiment all --jobs 2  (OMP_NUM_THREADS=1 per run; recipe configs/experiment_fmnist.yaml)"


@dataclass(frozen=True)
class ShippedWeights:
    """One shipped weight file and its metadata.

    Attributes:
        model: The timm model name the weights belong to.
        file: File name in :data:`WEIGHTS_DIR`.
        dataset: Training dataset.
        num_classes: Classifier outputs.
        in_chans: Input channels.
        input_size: ``(C, H, W)`` of the training inputs.
        mean: Per-channel normalisation mean (inputs in [0, 1]).
        std: Per-channel normalisation std.
        test_top1: Top-1 accuracy (%) on the full test set, as measured after training.
        test_top5: Top-5 accuracy (%) on the full test set.
        test_top1_first2000: Top-1 (%) on the first 2,000 test images (the fast check of ``tests/test_pretrained.py``).
        params: Parameters.
        pool_size: Size of the last feature map at ``input_size``.
        label_names: Class names, in classifier order.
        command: The ``gsanet train`` command that trained the weights (also in the run's ``command.txt``).
        experiment: The command that ran it.
        notes: Recipe and selection.
    """

    model: str
    file: str
    dataset: str
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_top1: float
    test_top5: float
    test_top1_first2000: float
    params: int
    pool_size: tuple[int, int]
    label_names: tuple[str, ...]
    command: str
    experiment: str = _EXPERIMENT
    notes: str = ""

    @property
    def path(self) -> Path:
        """Absolute path of the weight file."""
        return WEIGHTS_DIR / self.file


_NOTES = (
    "seed-0 run of the comparison (results/experiment_compare.md): 10,000-image fixed training subset, 3 epochs "
    "(1 warm-up), AdamW lr 2e-3, wd 0.05, label smoothing 0.1, batch 128, cosine; weights after the last epoch "
    "(no selection on the test set); test = the 10,000-image Fashion-MNIST test split, inputs (x/255 - mean) / std"
)

SHIPPED: dict[str, ShippedWeights] = {}
"""Shipped weights by model name (filled in below from the measured runs)."""


def shipped_path(model_name: str) -> Path | None:
    """The shipped weight file of a model, or None."""
    entry = SHIPPED.get(model_name)
    return entry.path if entry is not None else None


def shipped_overlay(model_name: str) -> dict[str, Any] | None:
    """A timm ``pretrained_cfg_overlay`` loading the shipped weights of ``model_name`` offline, or None.

    Returns None when the model has no shipped weights or the file is missing (e.g. a source checkout without the
    weights), so that callers fall back to the model's own pretrained config.
    """
    entry = SHIPPED.get(model_name)
    if entry is None or not entry.path.is_file():
        return None
    return {
        "file": str(entry.path),
        "url": "",
        "hf_hub_id": None,
        "num_classes": entry.num_classes,
        "input_size": entry.input_size,
        "test_input_size": entry.input_size,
        "pool_size": entry.pool_size,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": entry.mean,
        "std": entry.std,
        "tag": entry.dataset,
        "label_names": entry.label_names,
        "license": "apache-2.0",
        "notes": (f"gsanet shipped weights: test top-1 {entry.test_top1:.2f}% on {entry.dataset}",),
    }
