"""Weights shipped with gsanet (``gsanet/weights/*.safetensors``), registered as timm pretrained tags.

Each entry of :data:`SHIPPED` records, next to the weight file, what the weights expect (dataset, classes, channels,
input size, normalisation), the accuracy they were measured at, and the commands that produced them
(torchvision's weights ``meta``). The files hold the model's ``state_dict`` only (float32, no training state).

:data:`SHIPPED` is the source of the timm tags, not a second registry to look weights up in: :func:`shipped_cfg`
turns an entry into the timm pretrained config of the tag ``<model>.<tag>`` (e.g. ``gsa_resnet26_tiny.fmnist``) in
the models' ``default_cfgs`` (``gsanet/models/gsa_resnet.py``), whose ``file`` points at the local weights, and
callers ask timm (``timm.get_pretrained_cfg``, ``model.pretrained_cfg``). timm's own machinery does the rest,
offline: ``timm.list_models(pretrained=True)`` and ``timm.is_model_pretrained`` list them, the tag is the model's
default config (timm puts a tag with weights first), and ``timm.create_model("gsa_resnet26_tiny", pretrained=True)``
builds the 10-class, 1-channel, 28x28 Fashion-MNIST model and loads the file (timm resolves a ``file`` source before
any hub or URL). Asked for 3 input channels, as timm's scripts do by default, timm adapts the 1-channel first
convolution (``adapt_input_conv``: the weights repeated and divided by 3, so a grey image given as RGB gives the same
output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsanet.datasets import DATASETS

__all__ = [
    "SHIPPED",
    "WEIGHTS_DIR",
    "ShippedWeights",
    "shipped_cfg",
]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
"""Where the shipped ``.safetensors`` files live (installed as package data)."""

_EXPERIMENT = (
    "gsanet experiment compare --config configs/experiment_fmnist_full.yaml --runs runs/experiments-full "
    "--out results/experiment_full_recipe --jobs 1 --threads 1"
)


@dataclass(frozen=True)
class ShippedWeights:
    """One shipped weight file and its metadata.

    Attributes:
        model: The timm model name the weights belong to.
        tag: The timm pretrained tag (``timm.create_model(f"{model}.{tag}", pretrained=True)``).
        file: File name in :data:`WEIGHTS_DIR`.
        dataset: Training dataset.
        num_classes: Classifier outputs.
        in_chans: Input channels.
        input_size: ``(C, H, W)`` of the training inputs.
        mean: Per-channel normalisation mean (inputs in [0, 1]).
        std: Per-channel normalisation std.
        test_top1: Top-1 accuracy (%) on the full test set, as measured after training.
        test_top5: Top-5 accuracy (%) on the full test set.
        test_top1_first1000: Top-1 (%) on the first 1,000 test images (the fast check of ``tests/test_pretrained.py``).
        params: Parameters.
        pool_size: Size of the last feature map at ``input_size``.
        label_names: Class names, in classifier order.
        command: The ``gsanet train`` command that trained the weights (also in the run's ``command.txt``).
        experiment: The command that ran it.
        notes: Recipe and selection.
    """

    model: str
    tag: str
    file: str
    dataset: str
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_top1: float
    test_top5: float
    test_top1_first1000: float
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

    @property
    def name(self) -> str:
        """The model name with its tag, as ``timm.list_models(pretrained=True)`` lists it."""
        return f"{self.model}.{self.tag}"


_NOTES = (
    "seed-0 run of the full-recipe comparison (results/experiment_full_recipe/experiment_compare.md): the main recipe "
    "(configs/fashion_mnist.yaml): all 60,000 training images, 2 epochs, AdamW lr 5e-3, wd 0.05, label smoothing 0.1, "
    "batch 128, cosine, bf16 autocast; weights after the last epoch (no selection on the test set); test = the "
    "10,000-image Fashion-MNIST test split, inputs (x/255 - mean) / std, accuracies here evaluated in float32 "
    "(the run's own bf16 evaluation: gsa 91.16%, conv 92.00%)"
)

_TRAIN = (
    "gsanet train --config configs/experiment_fmnist_full.yaml --model {model} --seed 0 --data fashion-mnist "
    "--out runs/experiments-full/fashion-mnist --name {model}-s0 --no-progress"
)


def _fmnist(model: str, **kwargs: Any) -> ShippedWeights:
    spec = DATASETS["fashion-mnist"]
    return ShippedWeights(
        model=model,
        tag="fmnist",
        file=f"{model}_fmnist.safetensors",
        dataset=spec.name,
        num_classes=spec.num_classes,
        in_chans=spec.in_chans,
        input_size=spec.input_size,
        mean=spec.mean,
        std=spec.std,
        pool_size=(4, 4),
        label_names=spec.class_names,
        command=_TRAIN.format(model=model),
        notes=_NOTES,
        **kwargs,
    )


SHIPPED: dict[str, ShippedWeights] = {
    "gsa_resnet26_tiny": _fmnist(
        "gsa_resnet26_tiny", test_top1=91.20, test_top5=99.84, test_top1_first1000=92.1, params=550_394
    ),
    "conv_resnet26_tiny": _fmnist(
        "conv_resnet26_tiny", test_top1=92.08, test_top5=99.84, test_top1_first1000=93.6, params=738_298
    ),
}
"""Shipped weights by model name; accuracies measured on the exported files (``tests/shipped.py``)."""


def shipped_cfg(entry: ShippedWeights) -> dict[str, Any]:
    """The timm pretrained config of a shipped weight file (the keys of ``timm.models.PretrainedCfg``).

    It describes the weights completely: where they are (``file``), the classes and their names, the input channels
    and size (``input_size``, which timm reads as the weights' channel count when it adapts the first convolution),
    the normalisation and the evaluation crop (none: the whole 28x28 image).
    """
    return {
        "file": str(entry.path),
        "num_classes": entry.num_classes,
        "input_size": entry.input_size,
        "test_input_size": entry.input_size,
        "pool_size": entry.pool_size,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": entry.mean,
        "std": entry.std,
        "label_names": entry.label_names,
        "license": "apache-2.0",
        "description": f"gsanet {entry.model} trained on {entry.dataset}",
        "notes": (f"test top-1 {entry.test_top1:.2f}%, top-5 {entry.test_top5:.2f}% on {entry.dataset}", entry.notes),
    }
