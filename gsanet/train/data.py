"""Datasets and loaders: Fashion-MNIST (idx files), CIFAR-10/100 (torchvision), image folders (timm).

* ``fashion-mnist``: the four idx(.gz) files are looked for in ``data_dir``, ``data_dir/FashionMNIST/raw``,
  ``data_dir/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``), else
  downloaded by torchvision into ``data_dir``. The images stay in memory as uint8; the augmentation (our choice: a
  random 28x28 crop of the image padded by 2, and a horizontal flip) is drawn per epoch from the run's seed and the
  sample index, so it is identical whatever the number of processes or loader workers. The test split is the
  validation set; mean/std 0.2860/0.3530.
* ``cifar10`` / ``cifar100``: torchvision's layout under ``data_dir`` (downloaded when missing and allowed); random
  crop with padding 4 and flip, optional timm RandAugment and random erasing.
* any other value is a folder with ``train/`` and ``val/`` (or ``validation/``) subfolders of one folder per class
  (the ImageNet layout), read with timm's image-folder reader and transformed with ``timm.data.create_transform``.

Loaders shard with a ``DistributedSampler`` (also for one process, so one process and N processes with the same
global batch see the same batches); :func:`set_epoch` reseeds the sampler, the loader's worker seeds and the
augmentation for each epoch.
"""

from __future__ import annotations

import gzip
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageDataset, create_transform
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .config import DataError
from .distributed import DistContext, ShardSampler

__all__ = [
    "CIFAR_STATS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "SYSTEM_FASHION_MNIST_DIR",
    "CheckedImageDataset",
    "DataInfo",
    "TensorImageDataset",
    "create_datasets",
    "create_loader",
    "epoch_seed",
    "find_fashion_mnist",
    "read_idx",
    "set_epoch",
    "write_idx",
]

_logger = logging.getLogger(__name__)

SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class DataInfo:
    """What the model needs to know about a dataset."""

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for (run seed, epoch, rank), free of collisions such as ``seed + epoch``."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------------- idx files
def _open_maybe_gz(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read()


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an idx file (the MNIST format), gzip-compressed if its name ends in ``.gz``.

    Raises:
        DataError: The file cannot be read or is not a valid idx file.
    """
    path = Path(path)
    try:
        raw = _open_maybe_gz(path)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read idx file {path}: {e}; replace it with an intact copy") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an idx file (bad magic number); replace it with an intact copy")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (incomplete header); replace it with an intact copy")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path} has {len(raw)} bytes but its header {tuple(shape)} needs {expected}; "
            "replace it with an intact copy"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | Path, tensor: torch.Tensor) -> None:
    """Write a uint8/int8/int16/int32/float32/float64 tensor as an idx file (gzip if the name ends in ``.gz``)."""
    path = Path(path)
    array = tensor.detach().cpu().numpy()
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    if array.dtype not in codes:
        raise ValueError(f"idx files hold uint8, int8, int16, int32, float32 or float64, not {array.dtype}")
    data = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(data_dir: str | Path | None) -> Path | None:
    """The first folder holding the four Fashion-MNIST idx files (plain or ``.gz``), or None."""
    candidates = []
    if data_dir is not None:
        root = Path(data_dir)
        candidates += [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    candidates.append(SYSTEM_FASHION_MNIST_DIR)
    stems = [stem for pair in _FASHION_MNIST_FILES.values() for stem in pair]
    for folder in candidates:
        if all(_idx_file(folder, stem) is not None for stem in stems):
            return folder
    return None


# ------------------------------------------------------------------------------------------------------ datasets
class TensorImageDataset(Dataset):
    """In-memory uint8 images ``N x C x H x W`` with per-epoch, per-index random crop (zero padding) and flip.

    The augmentation parameters of epoch ``e`` come from ``epoch_seed(seed, e)`` and the sample index only, so they
    do not depend on loader workers, process count or the global random state.

    Args:
        images: uint8 tensor ``N x C x H x W``.
        targets: int64 tensor ``N``.
        mean: Per-channel mean in [0, 1].
        std: Per-channel standard deviation in [0, 1].
        pad: Zero padding of the random crop (0 = no crop).
        hflip: Random horizontal flip.
        seed: Run seed.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        pad: int = 0,
        hflip: bool = False,
        seed: int = 0,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        self.height, self.width = images.shape[-2:]
        self.images = F.pad(images, (pad, pad, pad, pad)) if pad else images  # N x C x (H+2p) x (W+2p)
        self.targets = targets.long()
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.pad, self.hflip, self.seed = pad, hflip, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crop offsets and flips of every sample for ``epoch``."""
        n = len(self.targets)
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        self._offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        self._flips = torch.rand(n, generator=generator) < 0.5 if self.hflip else torch.zeros(n, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        dy, dx = self._offsets[index].tolist()
        image = self.images[index, :, dy : dy + self.height, dx : dx + self.width]  # C x H x W
        if self._flips[index]:
            image = image.flip(-1)
        image = (image.float() / 255.0 - self.mean) / self.std
        return image, int(self.targets[index])


class CheckedImageDataset(ImageDataset):
    """timm's :class:`~timm.data.ImageDataset` that stops on an unreadable image instead of skipping it."""

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path = self.reader.filename(index, absolute=True)
        file = None
        try:
            file, target = self.reader[index]
            img = Image.open(file).convert(self.input_img_mode or "RGB")  # decodes the pixels
        except OSError as e:  # PIL.UnidentifiedImageError and truncated files are OSErrors
            raise DataError(f"cannot read image {path}: {e}; delete or replace the file, then run again") from e
        finally:
            if hasattr(file, "close"):
                file.close()
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def _fashion_mnist(
    splits: Sequence[str], data_dir: str, download: bool, img_size: int | None, augment: bool, seed: int
) -> tuple[dict[str, Dataset], DataInfo]:
    folder = find_fashion_mnist(data_dir)
    tensors = {}
    for split in splits:
        if folder is not None:
            images_stem, labels_stem = _FASHION_MNIST_FILES[split]
            images, labels = read_idx(_idx_file(folder, images_stem)), read_idx(_idx_file(folder, labels_stem))
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(
                    f"Fashion-MNIST {split} files in {folder} do not match: images {tuple(images.shape)}, labels "
                    f"{tuple(labels.shape)}; replace them with intact copies"
                )
        elif not download:
            raise DataError(
                f"Fashion-MNIST idx files not found in {data_dir} or {SYSTEM_FASHION_MNIST_DIR}; put the four "
                "*-ubyte.gz files in --data-dir, install Debian's dataset-fashion-mnist, or allow --download"
            )
        else:
            from torchvision.datasets import FashionMNIST

            try:
                ds = FashionMNIST(root=data_dir, train=split == "train", download=True)
            except Exception as e:  # network errors come in many types
                raise DataError(
                    f"Fashion-MNIST is not in {data_dir} or {SYSTEM_FASHION_MNIST_DIR} and the download failed ({e}); "
                    "put the four *-ubyte.gz files in --data-dir or run with internet access"
                ) from e
            images, labels = ds.data, ds.targets
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
            raise DataError(f"Fashion-MNIST {split} labels outside 0..9; replace the label file with an intact copy")
        tensors[split] = (images, labels)
    if folder is not None:
        _logger.info("Fashion-MNIST idx files: %s", folder)
    size = img_size or 28
    datasets = {}
    for split, (images, labels) in tensors.items():
        images = images.unsqueeze(1)  # N x 1 x 28 x 28
        if size != images.shape[-1]:
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
            images = images.round().clamp(0, 255).to(torch.uint8)
        train = split == "train" and augment
        datasets[split] = TensorImageDataset(
            images, labels, FASHION_MNIST_MEAN, FASHION_MNIST_STD, pad=2 if train else 0, hflip=train, seed=seed
        )
    info = DataInfo("fashion-mnist", 10, 1, size, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES)
    return datasets, info


def _cifar(
    name: str,
    splits: Sequence[str],
    data_dir: str,
    download: bool,
    img_size: int | None,
    augment: bool,
    auto_augment: str | None,
    reprob: float,
) -> tuple[dict[str, Dataset], DataInfo]:
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as T

    mean, std = CIFAR_STATS[name]
    size = img_size or 32
    resize = [T.Resize(size)] if size != 32 else []
    train_tf: list[Any] = list(resize)
    if augment:
        train_tf += [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()]
    if auto_augment:
        hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
        train_tf.append(rand_augment_transform(auto_augment, hparams))
    train_tf += [T.ToTensor(), T.Normalize(mean, std)]
    if reprob > 0:
        train_tf.append(RandomErasing(reprob, mode="pixel", device="cpu"))
    transforms = {"train": T.Compose(train_tf), "val": T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])}
    cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    datasets = {}
    for split in splits:
        try:
            datasets[split] = cls(root=data_dir, train=split == "train", transform=transforms[split], download=download)
        except Exception as e:  # missing files (RuntimeError) or network errors
            folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
            raise DataError(
                f"{name} not found under {data_dir} ({e}); allow --download (needs internet) or copy torchvision's "
                f"{folder} folder into --data-dir"
            ) from e
    classes = tuple(next(iter(datasets.values())).classes)
    return datasets, DataInfo(name, len(classes), 3, size, mean, std, classes)


def _default_img_size(model_name: str | None) -> int:
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(model_name) if model_name else None
        return int(cfg.input_size[-1]) if cfg is not None else 224
    except Exception:  # unknown model name: the model creation reports it
        return 224


def _image_folder(
    root: Path,
    splits: Sequence[str],
    img_size: int | None,
    model_name: str | None,
    augment: bool,
    auto_augment: str | None,
    reprob: float,
    class_names: Sequence[str] | None,
) -> tuple[dict[str, Dataset], DataInfo]:
    if not root.exists():
        raise DataError(
            f"dataset directory {root} does not exist; --data is fashion-mnist, cifar10, cifar100 or the path of a "
            "folder with train/ and val/ subfolders (one folder per class, the ImageNet layout)"
        )
    if not root.is_dir():
        raise DataError(f"--data {root} is a file, not a folder; give a folder with train/ and val/ subfolders")
    folders = {}
    for split in splits:
        names = ("train",) if split == "train" else ("val", "validation")
        found = [root / n for n in names if (root / n).is_dir()]
        if not found:
            present = sorted(p.name for p in root.iterdir())[:10]
            raise DataError(
                f"{root} has no {'/ or '.join(names)}/ subfolder (it holds: {', '.join(present) or 'nothing'}); "
                "arrange the images as <data>/train/<class>/*.jpg and <data>/val/<class>/*.jpg"
            )
        folders[split] = found[0]
    size = img_size or _default_img_size(model_name)
    mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    transforms = {
        "train": create_transform(
            size,
            is_training=augment,
            auto_augment=auto_augment,
            re_prob=reprob,
            interpolation="bicubic",
            mean=mean,
            std=std,
        ),
        "val": create_transform(size, is_training=False, interpolation="bicubic", mean=mean, std=std),
    }
    class_to_idx = {name: i for i, name in enumerate(class_names)} if class_names else None
    if class_to_idx is None:  # the class folders of the training split (or of the only split asked for)
        first = folders.get("train", next(iter(folders.values())))
        class_to_idx = {name: i for i, name in enumerate(sorted(p.name for p in first.iterdir() if p.is_dir()))}
        if not class_to_idx:
            raise DataError(
                f"{first} has no class subfolders; put the images in one subfolder per class, "
                f"e.g. {first}/<class>/0001.jpg"
            )
    datasets = {}
    for split, folder in folders.items():
        extra = sorted({p.name for p in folder.iterdir() if p.is_dir()} - set(class_to_idx))
        if extra:
            raise DataError(
                f"{folder} has classes the model does not know: {', '.join(extra[:10])}; every split must use the "
                "class folders of the training split"
            )
        try:
            datasets[split] = CheckedImageDataset(str(folder), transform=transforms[split], class_map=class_to_idx)
        except RuntimeError as e:  # "Found 0 images in subfolders of ..."
            raise DataError(
                f"no images found in {folder} ({e}); put the images in one subfolder per class, e.g. "
                f"{folder}/<class>/0001.jpg"
            ) from e
    names = tuple(sorted(class_to_idx, key=class_to_idx.get))
    return datasets, DataInfo(str(root), len(names), 3, size, tuple(mean), tuple(std), names)


def _subset(dataset: Dataset, size: int | None) -> Dataset:
    """A fixed random subset (independent of the run seed, so runs with different seeds share it)."""
    if size is None or size >= len(dataset):
        return dataset
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:size].sort().values
    return Subset(dataset, indices.tolist())


def create_datasets(
    data: str,
    data_dir: str = "data",
    *,
    splits: Sequence[str] = ("train", "val"),
    download: bool = True,
    img_size: int | None = None,
    model_name: str | None = None,
    augment: bool = True,
    auto_augment: str | None = None,
    reprob: float = 0.0,
    seed: int = 0,
    train_subset: int | None = None,
    val_subset: int | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[dict[str, Dataset], DataInfo]:
    """The requested splits (``train``, ``val``) of a dataset, and its :class:`DataInfo`.

    Args:
        data: ``fashion-mnist``, ``cifar10``, ``cifar100`` or the path of an image-folder tree.
        data_dir: Root of the torchvision datasets.
        splits: Which splits to build.
        download: Let torchvision download a missing dataset.
        img_size: Input size; None = the dataset's native size (or the model's default for image folders).
        model_name: Model whose default input size image folders use.
        augment: Training augmentation on/off.
        auto_augment: timm RandAugment/AutoAugment policy string (CIFAR and image folders).
        reprob: Random-erasing probability (CIFAR and image folders).
        seed: Run seed (Fashion-MNIST augmentation).
        train_subset: Keep a fixed random subset of this many training images.
        val_subset: Keep a fixed random subset of this many validation images.
        class_names: Class order of image folders (e.g. from a checkpoint); default: sorted training folders.

    Raises:
        DataError: The dataset is missing, empty or unreadable.
    """
    unknown = set(splits) - {"train", "val"}
    if unknown:
        raise ValueError(f"splits are train and val, got {sorted(unknown)}")
    if data == "fashion-mnist":
        if auto_augment or reprob:
            raise DataError("auto_augment and reprob are not implemented for fashion-mnist; remove them")
        datasets, info = _fashion_mnist(splits, data_dir, download, img_size, augment, seed)
    elif data in CIFAR_STATS:
        datasets, info = _cifar(data, splits, data_dir, download, img_size, augment, auto_augment, reprob)
    else:
        datasets, info = _image_folder(
            Path(data), splits, img_size, model_name, augment, auto_augment, reprob, class_names
        )
    subsets = {"train": train_subset, "val": val_subset}
    datasets = {split: _subset(ds, subsets[split]) for split, ds in datasets.items()}
    for split, ds in datasets.items():
        if len(ds) == 0:
            raise DataError(f"the {split} split of {data} is empty; check its files")
    return datasets, info


# ------------------------------------------------------------------------------------------------------- loaders
def create_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    ctx: DistContext,
    seed: int = 0,
    workers: int = 0,
) -> DataLoader:
    """A loader sharded over processes: shuffled full batches for training, every sample once for evaluation.

    Raises:
        DataError: The training set is too small for one batch per process.
    """
    if train:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
        if len(sampler) < batch_size:
            raise DataError(
                f"the training set has {len(dataset)} images, {len(sampler)} per process: less than one batch of "
                f"{batch_size}; lower --batch-size or use more data"
            )
    else:
        sampler = ShardSampler(len(dataset), ctx.rank, ctx.world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=train,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def set_epoch(loader: DataLoader, epoch: int, seed: int, rank: int = 0) -> None:
    """Reseed everything random in ``loader`` for ``epoch``: the sampler, the worker seeds, the augmentation."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed(seed, epoch, rank))
    dataset = loader.dataset
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
