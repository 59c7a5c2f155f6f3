"""The built-in datasets: one registry of what every part of gsanet needs to know about them.

Training (:mod:`gsanet.train.data` builds the splits from an entry), the run directory (a built-in name is used as it
is in run directory names), evaluation (a built-in dataset's classes are its own), the experiments (default recipe,
which datasets ``--data auto`` finds, test-set size, input shape of the tables) and the shipped weights' configs
(:mod:`gsanet.models.pretrained`: mean, std, class names) all read :data:`DATASETS`. Adding a dataset is one entry
here and its experiment recipe in ``configs/`` (a torchvision dataset whose class takes ``root``, ``train``,
``transform`` and ``download`` needs no other code).

This module imports nothing but the standard library, so that every layer of the package may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASETS", "DatasetSpec", "dataset_spec"]


@dataclass(frozen=True)
class DatasetSpec:
    """The facts of one built-in dataset.

    Attributes:
        name: The ``--data`` value (and the run directory name component).
        num_classes: Classifier outputs.
        in_chans: Image channels.
        img_size: Native image size (square).
        mean: Per-channel normalisation mean of the inputs in [0, 1].
        std: Per-channel normalisation standard deviation.
        class_names: Class names in label order; empty when the dataset's files give them (torchvision's
            ``classes``).
        torchvision: The torchvision dataset class that reads it (``CIFAR10``); None: the idx-file reader of
            :mod:`gsanet.train.data` (Fashion-MNIST).
        folder: torchvision's folder of the dataset under ``--data-dir``; ``gsanet experiment --data auto`` takes the
            dataset when it is there. None: always taken (it has system copies and a download).
        recipe: The ``gsanet train --config`` recipe of the experiments on it (relative to the repository root).
        test_images: Images in its test split (the validation set of ``gsanet train`` by default).
    """

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    torchvision: str | None
    folder: str | None
    recipe: str
    test_images: int

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` at the native size."""
        return (self.in_chans, self.img_size, self.img_size)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="fashion-mnist",
            num_classes=10,
            in_chans=1,
            img_size=28,
            mean=(0.2860,),
            std=(0.3530,),
            class_names=(
                "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                "Ankle boot",
            ),  # fmt: skip
            torchvision=None,
            folder=None,
            recipe="configs/experiment_fmnist.yaml",
            test_images=10_000,
        ),
        DatasetSpec(
            name="cifar10",
            num_classes=10,
            in_chans=3,
            img_size=32,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            class_names=(),
            torchvision="CIFAR10",
            folder="cifar-10-batches-py",
            recipe="configs/experiment_cifar.yaml",
            test_images=10_000,
        ),
        DatasetSpec(
            name="cifar100",
            num_classes=100,
            in_chans=3,
            img_size=32,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            class_names=(),
            torchvision="CIFAR100",
            folder="cifar-100-python",
            recipe="configs/experiment_cifar.yaml",
            test_images=10_000,
        ),
    )
}
"""The built-in datasets by ``--data`` name; any other ``--data`` is an image folder (the ImageNet layout)."""


def dataset_spec(name: str) -> DatasetSpec | None:
    """The registry entry of a ``--data`` value, or None for an image folder."""
    return DATASETS.get(name)
