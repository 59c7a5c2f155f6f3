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

__all__ = [
    "FMNIST_CLASSES",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "SHIPPED",
    "WEIGHTS_DIR",
    "ShippedWeights",
    "evaluate_shipped",
    "export_weights",
    "shipped_cfg",
]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
"""Where the shipped ``.safetensors`` files live (installed as package data)."""

FMNIST_MEAN = (0.2860,)
"""Fashion-MNIST's per-channel mean of the inputs in [0, 1] (the tiny models' default config)."""
FMNIST_STD = (0.3530,)
"""Fashion-MNIST's per-channel standard deviation."""
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
"""Fashion-MNIST's class names, in label order."""
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
    "--output runs/experiments-full/fashion-mnist --name {model}-s0 --no-progress"
)


def _fmnist(model: str, **kwargs: Any) -> ShippedWeights:
    return ShippedWeights(
        model=model,
        tag="fmnist",
        file=f"{model}_fmnist.safetensors",
        dataset="fashion-mnist",
        num_classes=10,
        in_chans=1,
        input_size=(1, 28, 28),
        mean=FMNIST_MEAN,
        std=FMNIST_STD,
        pool_size=(4, 4),
        label_names=FMNIST_CLASSES,
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
"""Shipped weights by model name; accuracies measured on the exported files (``evaluate_shipped``)."""


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


def export_weights(checkpoint: str | Path, dest: str | Path, *, model_name: str | None = None) -> Path:
    """Write the model weights of a ``gsanet train`` checkpoint as a plain ``state_dict`` safetensors file.

    This is how the files in :data:`WEIGHTS_DIR` are made. The weights pass the checks of
    :func:`gsanet.train.rundir.load_model` (they fit the model of the checkpoint's metadata and are finite).

    Args:
        checkpoint: A gsanet checkpoint (``.safetensors``) or run directory (its ``checkpoints/last.safetensors``).
        dest: The weight file to write (e.g. ``gsanet/weights/<model>_fmnist.safetensors``).
        model_name: Expected model name (checked against the checkpoint's).

    Raises:
        ValueError: The checkpoint holds another model.
        gsanet.train.errors.TrainError: A missing, malformed or non-finite checkpoint.
    """
    import json

    from safetensors.torch import save_file

    from gsanet.train.rundir import RunDir, load_model

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
    import torch

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
            x = (x - FMNIST_MEAN[0]) / FMNIST_STD[0]
            correct += int((model(x).argmax(-1) == labels[i : i + batch_size]).sum())
    return 100.0 * correct / len(images)
