"""Datasets and loaders: Fashion-MNIST (idx files), CIFAR-10/100 (torchvision), image folders (timm).

* ``fashion-mnist``: the four idx(.gz) files are looked for in ``data_dir``, ``data_dir/FashionMNIST/raw``,
  ``data_dir/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``), else
  downloaded by torchvision into ``data_dir``; a folder of ``data_dir`` holding only some of the four files is an
  error (never a silent fall-back to another copy). The subsets and the held-out split are taken before any resize,
  and a resize whose images would take more than half of the available memory is refused. The images stay in
  memory as uint8; the augmentation (our choice: a
  random 28x28 crop of the image padded by 2, and a horizontal flip) is drawn per epoch from the run's seed and the
  sample index, so it is identical whatever the number of processes or loader workers. The test split is the
  validation set; mean/std 0.2860/0.3530.
* ``cifar10`` / ``cifar100``: torchvision's layout under ``data_dir`` (downloaded when missing and allowed); random
  crop with padding 4 and flip, optional timm RandAugment and random erasing.
* any other value is a folder with ``train/`` and ``val/`` (or ``validation/``) subfolders of one folder per class
  (the ImageNet layout), transformed with ``timm.data.create_transform``. The class of an image is the top-level
  folder under ``train/`` (or ``val/``) that holds it, at any depth below; symlinked folders are followed once each
  (a link loop or a second link to a folder already read is skipped). Images are turned by their EXIF orientation;
  16-bit, 32-bit and float images are scaled to 8 bits (:func:`to_8bit`). The
  training split needs at least two classes, each with an image.

Loaders shard with a ``DistributedSampler`` (also for one process, so one process and N processes with the same
global batch see the same batches); :func:`set_epoch` reseeds the sampler, the loader's worker seeds and the
augmentation for each epoch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gzip
import logging
import os
import signal
import struct
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageDataset, create_transform
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader import Reader
from timm.utils.misc import natural_key
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from gsanet.config import MAX_IMG_SIZE
from gsanet.datasets import DATASETS, DatasetSpec, dataset_spec
from gsanet.errors import ConfigError, DataError

from .distributed import DistContext, ShardSampler

__all__ = [
    "SYSTEM_FASHION_MNIST_DIR",
    "CheckedImageDataset",
    "DataInfo",
    "available_memory",
    "check_resize_memory",
    "FolderReader",
    "TensorImageDataset",
    "check_workers",
    "create_datasets",
    "create_loader",
    "epoch_seed",
    "find_class_images",
    "find_fashion_mnist",
    "format_bytes",
    "IDX_DTYPES",
    "idx_file",
    "quiet_worker",
    "read_idx",
    "set_epoch",
    "stratified_holdout",
    "to_8bit",
    "upright_8bit",
    "usable_cpus",
]

_logger = logging.getLogger(__name__)

SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_MNIST = DATASETS["fashion-mnist"]
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
"""The element types of idx files by their type code (the third byte of the header)."""
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_MAX_IDX_BYTES = 2**34  # 16 GiB: a header asking for more is corrupt (and is refused before anything is read)


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
def _read_exactly(f: Any, n: int) -> bytes:
    data = f.read(n)
    return data if data is not None else b""


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an idx file (the MNIST format), gzip-compressed if its name ends in ``.gz``.

    The header is read first and the payload is read only up to the size it announces (at most 16 GiB), so a
    decompression bomb or a corrupt header cannot exhaust the memory.

    Raises:
        DataError: The file cannot be read, is corrupt (bad magic, truncated, trailing bytes, broken compression)
            or is not a valid idx file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    fix = "replace it with an intact copy"
    try:
        with opener(path, "rb") as f:
            magic = _read_exactly(f, 4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
                raise DataError(f"{path} is not an idx file (bad magic number); {fix}")
            ndim = magic[3]
            dims = _read_exactly(f, 4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataError(f"{path} is truncated (incomplete header); {fix}")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = np.dtype(IDX_DTYPES[magic[2]])
            expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if expected > _MAX_IDX_BYTES:
                raise DataError(f"{path} announces {tuple(shape)} {dtype} elements ({expected} bytes): corrupt; {fix}")
            payload = _read_exactly(f, expected)
            extra = _read_exactly(f, 1)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a broken deflate stream is not
        raise DataError(f"cannot read idx file {path}: {e}; {fix}") from e
    if len(payload) != expected or extra:
        found = 4 + 4 * ndim + len(payload) + len(extra)
        more = "or more " if extra else ""
        raise DataError(
            f"{path} has {found} {more}bytes but its header {tuple(shape)} needs {4 + 4 * ndim + expected}; {fix}"
        )
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def idx_file(folder: Path, stem: str) -> Path | None:
    """The idx file ``stem`` in ``folder``, gzipped (``<stem>.gz``) or plain, or None when neither is there."""
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(data_dir: str | Path | None) -> Path | None:
    """The first folder holding the four Fashion-MNIST idx files (plain or ``.gz``), or None.

    Raises:
        DataError: A folder under ``data_dir`` holds some of the four files but not all (a broken copy: using the
            system copy instead would train on other data than the user gave).
    """
    candidates = []
    if data_dir is not None:
        root = Path(data_dir)
        candidates += [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    candidates.append(SYSTEM_FASHION_MNIST_DIR)
    stems = [stem for pair in _FASHION_MNIST_FILES.values() for stem in pair]
    for folder in candidates:
        found = [stem for stem in stems if idx_file(folder, stem) is not None]
        if len(found) == len(stems):
            return folder
        if found:
            missing = [stem + "(.gz)" for stem in stems if stem not in found]
            raise DataError(
                f"{folder} holds only part of Fashion-MNIST: {', '.join(missing)} missing; copy the missing file(s) "
                "there, or remove the partial copy to use another"
            )
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
        ids: Index of each image in the full dataset it was taken from (a subset); the augmentation of an image
            depends on this index, so a subset is augmented exactly as the same images of the full set.
        total: Size of that full dataset (default: ``len(images)``).
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
        ids: torch.Tensor | None = None,
        total: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        self.height, self.width = images.shape[-2:]
        self.images = F.pad(images, (pad, pad, pad, pad)) if pad else images  # N x C x (H+2p) x (W+2p)
        self.targets = targets.long()
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.pad, self.hflip, self.seed = pad, hflip, seed
        self.ids = ids
        self.total = total if total is not None else len(self.targets)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crop offsets and flips of every sample for ``epoch``."""
        n = self.total
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        self._offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        self._flips = torch.rand(n, generator=generator) < 0.5 if self.hflip else torch.zeros(n, dtype=torch.bool)
        if self.ids is not None:
            self._offsets, self._flips = self._offsets[self.ids], self._flips[self.ids]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        dy, dx = self._offsets[index].tolist()
        image = self.images[index, :, dy : dy + self.height, dx : dx + self.width]  # C x H x W
        if self._flips[index]:
            image = image.flip(-1)
        image = (image.float() / 255.0 - self.mean) / self.std
        return image, int(self.targets[index])


def to_8bit(img: Image.Image) -> Image.Image:
    """``img`` with 16-bit, 32-bit integer and float modes scaled to 8-bit ``L`` (PIL's ``convert`` would clip them to
    white or black); other modes unchanged.

    16-bit images (``I;16*``) are divided by 257 (0..65535 -> 0..255), so every image keeps its absolute level. 32-bit
    integer (``I``) and float (``F``) images have no fixed range: they are scaled by their actual one, from
    ``min(0, smallest value)`` (black) to the largest value (white); float images within [0, 1] keep that range
    (1.0 is white).

    Raises:
        ValueError: A float image with NaN or infinite pixels.
    """
    if img.mode.startswith("I;16"):
        array = np.asarray(img, dtype=np.float64) / 257.0
    elif img.mode in ("I", "F"):
        array = np.asarray(img, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError("the image has NaN or infinite pixels")
        low = min(0.0, float(array.min(initial=0.0)))
        high = float(array.max(initial=0.0))
        if img.mode == "F" and low == 0.0 and high <= 1.0:
            high = 1.0
        array = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    else:
        return img
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), mode="L")


def upright_8bit(img: Image.Image) -> Image.Image:
    """``img`` as a viewer shows it: turned by its EXIF orientation (a camera's portrait photo is stored sideways),
    then scaled to 8 bits (:func:`to_8bit`)."""
    return to_8bit(ImageOps.exif_transpose(img))


class CheckedImageDataset(ImageDataset):
    """timm's :class:`~timm.data.ImageDataset` that stops on an unreadable image instead of skipping it.

    Images are turned by their EXIF orientation and 16-bit, 32-bit and float images scaled to 8 bits
    (:func:`upright_8bit`) before the conversion to the input mode; an image over PIL's pixel limit
    (a decompression bomb) is a :class:`DataError` like any unreadable file.
    """

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path = self.reader.filename(index, absolute=True)
        file = None
        try:
            file, target = self.reader[index]
            img = upright_8bit(Image.open(file))
            img = img.convert(self.input_img_mode or "RGB")  # decodes the pixels
        except Image.DecompressionBombError as e:
            raise DataError(
                f"image {path} is too large to decode safely ({e}); shrink or remove it, or raise "
                "PIL.Image.MAX_IMAGE_PIXELS if you trust it"
            ) from e
        except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError and truncated files are OSErrors
            raise DataError(f"cannot read image {path}: {e}; delete or replace the file, then run again") from e
        finally:
            if hasattr(file, "close"):
                file.close()
        if self.transform is not None:
            img = self.transform(img)
        return img, target


class FolderReader(Reader):
    """A timm reader over a fixed list of ``(path, class index)`` samples (see :func:`find_class_images`)."""

    def __init__(self, root: str | Path, samples: Sequence[tuple[str, int]]) -> None:
        super().__init__()
        self.root = str(root)
        self.samples = list(samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        return open(path, "rb"), target

    def __len__(self) -> int:
        return len(self.samples)

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        filename = self.samples[index][0]
        if basename:
            return os.path.basename(filename)
        return filename if absolute else os.path.relpath(filename, self.root)


def _dir_key(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def find_class_images(folder: Path, class_names: Sequence[str]) -> dict[str, list[str]]:
    """The image files under each ``folder/<class>`` (at any depth), walking each real folder at most once.

    Symlinked folders are followed, but a folder already walked (a link loop, or a second link to it) and the
    folders of the other classes are skipped, so no image is counted twice and no walk loops.

    Raises:
        DataError: A folder cannot be listed.
    """
    extensions = get_img_extensions(as_set=True)
    class_keys = {name: _dir_key(folder / name) for name in class_names}
    found: dict[str, list[str]] = {}
    for name in class_names:
        seen = {key for other, key in class_keys.items() if other != name and key is not None}
        files: list[str] = []
        stack = [str(folder / name)]
        while stack:
            current = stack.pop()
            key = _dir_key(current)
            if key is None or key in seen:
                continue
            seen.add(key)
            try:
                entries = list(os.scandir(current))
            except OSError as e:
                raise DataError(f"cannot list {current}: {e.strerror or e}; check its permissions") from e
            for entry in entries:
                try:
                    if entry.is_dir():
                        stack.append(entry.path)
                    elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in extensions:
                        files.append(entry.path)
                except OSError:  # a dangling link or an entry removed meanwhile
                    continue
        found[name] = sorted(files, key=natural_key)
    return found


def available_memory() -> int | None:
    """Bytes of memory new allocations can get without swapping: ``MemAvailable`` of ``/proc/meminfo``, else the
    physical memory, else None (unknown: nothing is refused)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 ``N x C x H x W`` images, a chunk at a time (bounded float memory)."""
    out = torch.empty(*images.shape[:2], size, size, dtype=torch.uint8)
    chunk = max(1, 2**24 // (size * size * images.shape[1]))  # ~64 MB of float32 per chunk
    for start in range(0, len(images), chunk):
        part = F.interpolate(images[start : start + chunk].float(), size=(size, size), mode="bilinear", antialias=True)
        out[start : start + chunk] = part.round().clamp(0, 255).to(torch.uint8)
    return out


def _read_fashion_mnist(
    sources: Sequence[str], data_dir: str, download: bool
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The uint8 images ``N x 28 x 28`` and int64 labels of the idx files' ``train`` and/or ``val`` (t10k) splits."""
    folder = find_fashion_mnist(data_dir)
    tensors = {}
    for split in sources:
        if folder is not None:
            images_stem, labels_stem = _FASHION_MNIST_FILES[split]
            images, labels = read_idx(idx_file(folder, images_stem)), read_idx(idx_file(folder, labels_stem))
            where = f"Fashion-MNIST {split} files in {folder}"
            if images.dtype != torch.uint8 or labels.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32):
                raise DataError(
                    f"{where} hold {images.dtype} images and {labels.dtype} labels, not uint8 images and integer "
                    "labels; replace them with intact copies"
                )
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(
                    f"{where} do not match: images {tuple(images.shape)}, labels "
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
        if labels.numel() and (labels.min() < 0 or labels.max() >= _FASHION_MNIST.num_classes):
            raise DataError(f"Fashion-MNIST {split} labels outside 0..9; replace the label file with an intact copy")
        tensors[split] = (images, labels.long())
    if folder is not None:
        _logger.info("Fashion-MNIST idx files: %s", folder)
    return tensors


def format_bytes(count: float) -> str:
    """``count`` bytes in GiB, or in MiB below one GiB (for messages)."""
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def check_resize_memory(what: str, count: int, size: int, channels: int, fewer: str, copies: int = 1) -> None:
    """Refuse to resize ``count`` images to ``size`` x ``size`` when they would take more than half of the
    :func:`available_memory` (the other half is the model's and the loader's).

    Args:
        what: The images, for the message (e.g. ``"Fashion-MNIST train"``).
        count: How many images.
        size: Their side after the resize.
        channels: Their channels (uint8 each).
        fewer: The flag(s) that take fewer of these images, for the message.
        copies: Copies held at once (2 for a padded training set: the resized images and the padded copy).

    Raises:
        DataError: The images would not fit; the message says how many would, and which flag takes fewer.
    """
    per_image = copies * channels * size * size
    needed, memory = count * per_image, available_memory()
    if memory is None or needed <= memory // 2:
        return
    fit = memory // 2 // per_image
    fix = f"or fewer images with {fewer} (at most {fit} fit)" if fit >= 1 else "(not one image fits)"
    raise DataError(
        f"{what} at {size}x{size}: {count} images need {format_bytes(needed)} in memory, more than half of the "
        f"{format_bytes(memory)} available; use a smaller --img-size {fix}"
    )


def _fashion_mnist(
    splits: Sequence[str],
    data_dir: str,
    download: bool,
    img_size: int | None,
    augment: bool,
    seed: int,
    subsets: dict[str, int | None],
    holdout: int | None,
) -> tuple[dict[str, Dataset], DataInfo]:
    """Fashion-MNIST's splits; every subset (and the held-out split) is taken before the resize, so that only the
    images kept are resized."""
    sources = {"train": "train", "val": "train" if holdout is not None else "val"}
    tensors = _read_fashion_mnist(sorted({sources[split] for split in splits}), data_dir, download)
    chosen: dict[str, torch.Tensor | None] = dict.fromkeys(splits)
    if holdout is not None:
        held, rest = stratified_holdout(tensors["train"][1], holdout, "fashion-mnist")
        chosen.update(train=rest, val=held)
    fewer = {"train": "--train-subset", "val": "--holdout/--val-subset" if holdout is not None else "--val-subset"}
    spec = _FASHION_MNIST
    size = img_size or spec.img_size
    datasets = {}
    for split in splits:
        images, labels = tensors[sources[split]]
        total, ids = len(labels), chosen[split]
        kept = _subset_indices(total if ids is None else len(ids), subsets.get(split))
        if kept is not None:
            ids = kept if ids is None else ids[kept]
        if ids is not None:  # subset first: only the kept images are resized
            images, labels = images[ids], labels[ids]
        images = images.unsqueeze(1)  # N x 1 x 28 x 28
        train = split == "train" and augment
        if size != images.shape[-1]:
            check_resize_memory(f"Fashion-MNIST {split}", len(images), size, 1, fewer[split], 2 if train else 1)
            images = _resize_uint8(images, size)
        datasets[split] = TensorImageDataset(
            images, labels, spec.mean, spec.std, pad=2 if train else 0, hflip=train, seed=seed,
            ids=ids, total=total,
        )  # fmt: skip
    info = DataInfo(spec.name, spec.num_classes, spec.in_chans, size, spec.mean, spec.std, spec.class_names)
    return datasets, info


def _torchvision(
    spec: DatasetSpec,
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

    mean, std = spec.mean, spec.std
    size = img_size or spec.img_size
    resize = [T.Resize(size)] if size != spec.img_size else []
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
    cls = getattr(tv_datasets, spec.torchvision)
    datasets = {}
    for split in splits:
        try:
            datasets[split] = cls(root=data_dir, train=split == "train", transform=transforms[split], download=download)
        except Exception as e:  # missing files (RuntimeError) or network errors
            raise DataError(
                f"{spec.name} not found under {data_dir} ({e}); allow --download (needs internet) or copy "
                f"torchvision's {spec.folder} folder into --data-dir"
            ) from e
    classes = spec.class_names or tuple(next(iter(datasets.values())).classes)
    return datasets, DataInfo(spec.name, len(classes), spec.in_chans, size, mean, std, classes)


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
            f"dataset directory {root} does not exist; --data is {', '.join(DATASETS)} or the path of a folder with "
            "train/ and val/ subfolders (one folder per class, the ImageNet layout)"
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
        present = {p.name for p in folder.iterdir() if p.is_dir()}
        extra = sorted(present - set(class_to_idx))
        if extra:
            raise DataError(
                f"{folder} has class folder(s) the model has no class for: {', '.join(extra[:10])} (its classes: "
                f"{', '.join(list(class_to_idx)[:10])}); every split must use the class folders the model knows"
            )
        images = find_class_images(folder, [name for name in class_to_idx if name in present])
        if not any(images.values()):
            raise DataError(
                f"no images found in {folder} (extensions {', '.join(sorted(get_img_extensions()))}); put the images "
                f"in one subfolder per class, e.g. {folder}/<class>/0001.jpg"
            )
        if split == "train" and len(class_to_idx) < 2:
            raise DataError(
                f"{folder} has one class folder ({next(iter(class_to_idx))}): a classifier needs at least two; add "
                "a folder per class"
            )
        empty = [name for name in class_to_idx if not images.get(name)]
        if empty and split == "train":
            raise DataError(
                f"class folder(s) {', '.join(empty[:10])} in {folder} hold no images; add images or remove the folder"
            )
        if empty:
            _logger.warning("%s has no images of class(es) %s", folder, ", ".join(empty[:10]))
        loose = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in get_img_extensions()]
        if loose:
            _logger.warning("%d image(s) directly in %s are in no class folder and are left out", len(loose), folder)
        samples = sorted(
            ((path, class_to_idx[name]) for name, paths in images.items() for path in paths),
            key=lambda sample: natural_key(sample[0]),
        )
        datasets[split] = CheckedImageDataset(
            str(folder), reader=FolderReader(folder, samples), transform=transforms[split]
        )
    names = tuple(sorted(class_to_idx, key=class_to_idx.get))
    return datasets, DataInfo(str(root), len(names), 3, size, tuple(mean), tuple(std), names)


def _subset_indices(length: int, size: int | None) -> torch.Tensor | None:
    """Sorted indices of a fixed random subset (independent of the run seed, so runs with different seeds share
    it), or None for the whole set."""
    if size is None or size >= length:
        return None
    return torch.randperm(length, generator=torch.Generator().manual_seed(0))[:size].sort().values


def _subset(dataset: Dataset, size: int | None) -> Dataset:
    """A fixed random subset (see :func:`_subset_indices`)."""
    indices = _subset_indices(len(dataset), size)
    return dataset if indices is None else Subset(dataset, indices.tolist())


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
    holdout: int | None = None,
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
        holdout: Hold out a fixed split of this many training images, stratified by class (the same for every
            seed; :func:`stratified_holdout`), as the ``val`` split, without augmentation, instead of the dataset's
            test/val split; ``train`` is the rest of the training set (``train_subset`` is then a subset of the
            rest). For model selection that never looks at the test set. Taken before any resize.
        class_names: Class order of image folders (e.g. from a checkpoint); default: sorted training folders.

    Raises:
        DataError: The dataset is missing, empty or unreadable.
    """
    unknown = set(splits) - {"train", "val"}
    if unknown:
        raise ValueError(f"splits are train and val, got {sorted(unknown)}")
    if img_size is not None and not 1 <= img_size <= MAX_IMG_SIZE:
        raise DataError(f"img_size must be in 1..{MAX_IMG_SIZE}, got {img_size}")
    subsets = {"train": train_subset, "val": val_subset}
    if data == "fashion-mnist":
        if auto_augment or reprob:
            raise DataError("auto_augment and reprob are not implemented for fashion-mnist; remove them")
        datasets, info = _fashion_mnist(splits, data_dir, download, img_size, augment, seed, subsets, holdout)
        subsets = {}  # taken before the resize
    elif holdout is not None:
        return _holdout_datasets(
            data, data_dir, splits, download, img_size, model_name, augment, auto_augment, reprob, seed,
            train_subset, val_subset, holdout, class_names,
        )  # fmt: skip
    elif (spec := dataset_spec(data)) is not None:
        datasets, info = _torchvision(spec, splits, data_dir, download, img_size, augment, auto_augment, reprob)
    else:
        datasets, info = _image_folder(
            Path(data), splits, img_size, model_name, augment, auto_augment, reprob, class_names
        )
    datasets = {split: _subset(ds, subsets.get(split)) for split, ds in datasets.items()}
    for split, ds in datasets.items():
        if len(ds) == 0:
            raise DataError(f"the {split} split of {data} is empty; check its files")
    return datasets, info


def _holdout_datasets(
    data: str,
    data_dir: str,
    splits: Sequence[str],
    download: bool,
    img_size: int | None,
    model_name: str | None,
    augment: bool,
    auto_augment: str | None,
    reprob: float,
    seed: int,
    train_subset: int | None,
    val_subset: int | None,
    holdout: int,
    class_names: Sequence[str] | None,
) -> tuple[dict[str, Dataset], DataInfo]:
    """``train`` and ``val`` both taken from the training split: see ``holdout`` of :func:`create_datasets`."""
    common = dict(
        splits=("train",), download=download, img_size=img_size, model_name=model_name, seed=seed,
        class_names=class_names,
    )  # fmt: skip
    plain, info = create_datasets(data, data_dir, augment=False, **common)  # decoded lazily: nothing resized yet
    held, rest = stratified_holdout(_targets(plain["train"]), holdout, data)
    datasets = {}
    if "train" in splits:
        train = plain if not augment else create_datasets(
            data, data_dir, augment=True, auto_augment=auto_augment, reprob=reprob, **common
        )[0]
        kept = _subset_indices(len(rest), train_subset)
        rest = rest if kept is None else rest[kept]
        datasets["train"] = Subset(train["train"], rest.tolist())
    if "val" in splits:
        kept = _subset_indices(len(held), val_subset)
        held = held if kept is None else held[kept]
        datasets["val"] = Subset(plain["train"], held.tolist())
    return datasets, info


def _targets(dataset: Dataset) -> torch.Tensor:
    """The class index of every image of a CIFAR or image-folder dataset, read without decoding any image."""
    if isinstance(dataset, CheckedImageDataset):
        return torch.tensor([target for _, target in dataset.reader.samples], dtype=torch.long)
    return torch.as_tensor(dataset.targets, dtype=torch.long)  # torchvision's CIFAR


def stratified_holdout(targets: torch.Tensor, holdout: int, data: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the training images into ``holdout`` held-out ones and the rest, class by class.

    Each class is held out in proportion to its size and keeps at least one image for training; when ``holdout`` is
    at least the number of classes, every class with two images or more has at least one held out. The split is
    fixed (it does not depend on the run seed), so runs with different seeds validate on the same images.

    Args:
        targets: The class index of every training image.
        holdout: How many images to hold out.
        data: The dataset's name, for the message.

    Returns:
        The sorted indices of the held-out images and of the rest.

    Raises:
        DataError: ``holdout`` would leave a class without training images.
    """
    total = len(targets)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(1))  # fixed: independent of the run seed
    order = order[torch.argsort(targets[order], stable=True)]  # grouped by class, shuffled within each
    labels = targets[order]
    counts = torch.bincount(labels)
    present = int((counts > 0).sum())
    if holdout > total - present:
        raise DataError(
            f"--holdout {holdout} leaves no training images for some class of {data}: its training split has "
            f"{total} images in {present} classes, so at most {total - present} can be held out; hold out fewer"
        )
    size = counts[labels]  # the size of each image's class
    rank = torch.arange(total) - (torch.cumsum(counts, 0) - counts)[labels]  # its place in its class's order
    eligible = rank < size - 1  # the last image of every class stays in training
    # systematic sampling: the k-th image of a class of n comes at k/n, so every class is held out in proportion;
    # ties (the first image of every class, at 0) go to the larger classes first
    keys = np.lexsort((labels.numpy(), -size.numpy(), (rank.double() / size).numpy(), ~eligible.numpy()))
    held = order[torch.from_numpy(keys[:holdout])]
    mask = torch.ones(total, dtype=torch.bool)
    mask[held] = False
    return held.sort().values, torch.nonzero(mask).flatten()


# ------------------------------------------------------------------------------------------------------- loaders
def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_workers(workers: int) -> None:
    """Refuse more loader worker processes than usable CPUs: each is a whole Python process with its own copy of
    the decoding state, so more of them only compete for the cores and memory (5000 ended in the OOM killer).

    Raises:
        ConfigError: ``workers`` exceeds :func:`usable_cpus` (:data:`~gsanet.train.config.MAX_WORKERS` is checked by
            the config).
    """
    cpus = usable_cpus()
    if workers > cpus:
        raise ConfigError(
            f"--workers {workers} is more loader processes than this machine's {cpus} usable CPUs; use --workers "
            f"{cpus} or fewer (0 loads in the training process)"
        )


def _exit_quietly(signum: int, frame: object) -> None:
    os._exit(0)  # a worker that exits 0 is not a failure to the loader: no "killed by signal" error in the parent


def quiet_worker(worker_id: int, parent: int | None = None) -> None:
    """``worker_init_fn`` of every loader: a worker ignores SIGINT and exits quietly (status 0) on SIGTERM, so that a
    Ctrl-C or a SIGTERM sent to the whole process group stops the training process cleanly (it shuts its workers
    down) instead of killing the workers under it with a traceback each; and on Linux it is killed when its parent
    dies (never orphaned; the kernel's "parent" is the thread that started the worker, so a loader must not outlive
    the thread iterating it). SIGTERM must still end a worker: a process that exits while a loader iterator is alive
    (an error mid-epoch) stops its workers with SIGTERM and waits for them.

    Args:
        worker_id: The worker's index (unused).
        parent: The process that made the loader: a worker whose parent is already another has lost it and exits.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl: PyTorch's own watchdog still ends the worker, later
            pass
        if parent is not None and os.getppid() != parent:  # the parent died before the prctl
            os._exit(0)


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

    Workers are bounded by the usable CPUs (:func:`check_workers`) and run :func:`quiet_worker` first.

    Raises:
        ConfigError: More workers than usable CPUs.
        DataError: The training set is too small for one batch per process.
    """
    check_workers(workers)
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
        worker_init_fn=functools.partial(quiet_worker, parent=os.getpid()) if workers else None,
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
