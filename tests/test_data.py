"""Datasets and loaders: idx files, Fashion-MNIST, image folders, deterministic sharded loading."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from gsanet.datasets import DATASETS
from gsanet.errors import DataError
from gsanet.train.data import (
    IDX_DTYPES,
    SYSTEM_FASHION_MNIST_DIR,
    create_datasets,
    create_loader,
    find_fashion_mnist,
    read_idx,
    set_epoch,
)
from gsanet.train.distributed import DistContext

FMNIST = DATASETS["fashion-mnist"]


def write_idx(path: str | Path, tensor: torch.Tensor) -> None:
    """Write a uint8/int8/int16/int32/float32/float64 tensor as an idx file (gzip if the name ends in ``.gz``)."""
    path = Path(path)
    array = tensor.detach().cpu().numpy()
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    if array.dtype not in codes:
        raise ValueError(f"idx files hold uint8, int8, int16, int32, float32 or float64, not {array.dtype}")
    data = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)


def write_fake_fashion_mnist(folder: Path, n_train: int = 64, n_val: int = 32, seed: int = 0) -> Path:
    """Tiny learnable Fashion-MNIST stand-in: noise plus a bright band whose row encodes the class."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        labels = torch.arange(n) % 10
        images = (torch.rand(n, 28, 28, generator=generator) * 60).to(torch.uint8)
        for c in range(10):
            images[labels == c, 2 * c + 2 : 2 * c + 5, 4:24] = 250
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels.to(torch.uint8))
    return folder


def count_resized(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that receives the number of images of every ``F.interpolate`` call from now on (the resizes)."""
    resized: list[int] = []
    real = torch.nn.functional.interpolate

    def counting(images: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        resized.append(len(images))
        return real(images, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", counting)
    return resized


def write_image_folder(root: Path, classes: int = 2, per_class: int = 4, size: int = 12) -> Path:
    """``root/{train,val}/<class>/<i>.png`` with class-coloured images."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                pixels[..., c % 3] = 220
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_idx_round_trip(tmp_path: Path, dtype: torch.dtype, name: str) -> None:
    tensor = (torch.rand(3, 5, 4) * 100).to(dtype)
    write_idx(tmp_path / name, tensor)
    back = read_idx(tmp_path / name)
    assert back.dtype == dtype and torch.equal(back, tensor)


def test_idx_corrupt_files(tmp_path: Path) -> None:
    good = tmp_path / "good.idx"
    write_idx(good, torch.zeros(4, 3, 3, dtype=torch.uint8))
    raw = good.read_bytes()
    (tmp_path / "truncated.idx").write_bytes(raw[:-5])
    (tmp_path / "magic.idx").write_bytes(b"\x01\x02" + raw[2:])
    (tmp_path / "broken.idx.gz").write_bytes(gzip.compress(raw)[:20])
    for name, fragment in (("truncated.idx", "needs"), ("magic.idx", "magic"), ("broken.idx.gz", "cannot read")):
        with pytest.raises(DataError, match=fragment):
            read_idx(tmp_path / name)


@pytest.mark.skipif(
    find_fashion_mnist(None) is None, reason=f"Fashion-MNIST not installed in {SYSTEM_FASHION_MNIST_DIR}"
)
def test_real_fashion_mnist_files() -> None:
    folder = find_fashion_mnist(None)
    images = read_idx(folder / "train-images-idx3-ubyte.gz")
    labels = read_idx(folder / "train-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(torch.bincount(labels.long()), torch.full((10,), 6000))
    assert read_idx(folder / "t10k-images-idx3-ubyte.gz").shape == (10000, 28, 28)
    pixels = images.float() / 255
    assert abs(pixels.mean().item() - FMNIST.mean[0]) < 1e-3
    assert abs(pixels.std().item() - FMNIST.std[0]) < 1e-3


def test_fake_fashion_mnist_from_data_dir(tmp_path: Path) -> None:
    write_fake_fashion_mnist(tmp_path)
    datasets, info = create_datasets("fashion-mnist", str(tmp_path), download=False, augment=False)
    assert (len(datasets["train"]), len(datasets["val"])) == (64, 32)
    assert (info.num_classes, info.in_chans, info.img_size) == (10, 1, 28)
    image, label = datasets["val"][3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 3
    raw = read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")[3].float() / 255
    torch.testing.assert_close(image[0], (raw - FMNIST.mean[0]) / FMNIST.std[0])
    datasets, info = create_datasets("fashion-mnist", str(tmp_path), img_size=32, train_subset=10, val_subset=5)
    assert datasets["train"][0][0].shape == (1, 32, 32) and len(datasets["train"]) == 10 and len(datasets["val"]) == 5


def test_augmentation_is_seeded_per_epoch(tmp_path: Path) -> None:
    write_fake_fashion_mnist(tmp_path)
    train = create_datasets("fashion-mnist", str(tmp_path), seed=3)[0]["train"]
    train.set_epoch(0)
    first = torch.stack([train[i][0] for i in range(16)])
    train.set_epoch(1)
    second = torch.stack([train[i][0] for i in range(16)])
    train.set_epoch(0)
    assert torch.equal(first, torch.stack([train[i][0] for i in range(16)]))
    assert not torch.equal(first, second)


def test_sharded_batches_match_one_process(tmp_path: Path) -> None:
    """Two processes with batch 8 see, step by step, the same images as one process with batch 16."""
    write_fake_fashion_mnist(tmp_path)
    train = create_datasets("fashion-mnist", str(tmp_path), seed=1)[0]["train"]
    single = create_loader(train, 16, train=True, ctx=DistContext(), seed=1)
    shards = [create_loader(train, 8, train=True, ctx=DistContext(rank=r, world_size=2), seed=1) for r in (0, 1)]
    for epoch in (0, 1):
        for loader in (single, *shards):
            set_epoch(loader, epoch, seed=1)
        for (x, y), (x0, y0), (x1, y1) in zip(single, *shards, strict=True):
            key = {(int(label), tuple(img.flatten()[:40].tolist())) for img, label in zip(x, y, strict=True)}
            both = {
                (int(label), tuple(img.flatten()[:40].tolist()))
                for img, label in zip(torch.cat([x0, x1]), torch.cat([y0, y1]), strict=True)
            }  # noqa: E501
            assert key == both


def test_eval_loader_counts_every_sample_once(tmp_path: Path) -> None:
    write_fake_fashion_mnist(tmp_path, n_val=33)
    val = create_datasets("fashion-mnist", str(tmp_path))[0]["val"]
    counts = [
        sum(len(y) for _, y in create_loader(val, 8, train=False, ctx=DistContext(rank=r, world_size=2)))
        for r in (0, 1)
    ]  # noqa: E501
    assert sum(counts) == 33


def test_too_small_for_a_batch(tmp_path: Path) -> None:
    write_fake_fashion_mnist(tmp_path)
    train = create_datasets("fashion-mnist", str(tmp_path))[0]["train"]
    with pytest.raises(DataError, match="lower --batch-size"):
        create_loader(train, 128, train=True, ctx=DistContext())


def test_missing_fashion_mnist_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gsanet.train.data.SYSTEM_FASHION_MNIST_DIR", tmp_path / "none")
    with pytest.raises(DataError, match="idx files not found"):
        create_datasets("fashion-mnist", str(tmp_path / "empty"), download=False)


def test_image_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", classes=3)
    datasets, info = create_datasets(str(root), img_size=16)
    assert info.class_names == ("class_0", "class_1", "class_2") and info.in_chans == 3
    image, label = datasets["val"][5]
    assert image.shape == (3, 16, 16) and label == 1


def test_image_folder_unreadable_image_names_the_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs")
    bad = root / "train" / "class_1" / "2.png"
    bad.write_bytes(b"not a png at all")
    datasets, _ = create_datasets(str(root), img_size=16)
    index = [i for i, (path, _) in enumerate(datasets["train"].reader.samples) if Path(path) == bad][0]
    with pytest.raises(DataError, match=r"cannot read image .*2\.png.*delete or replace"):
        datasets["train"][index]


def test_image_folder_bad_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        create_datasets(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train/ subfolder"):
        create_datasets(str(tmp_path / "empty"))
    for split in ("train", "val"):
        (tmp_path / "no_images" / split / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        create_datasets(str(tmp_path / "no_images"))
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "val").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        create_datasets(str(tmp_path / "flat"))
    root = write_image_folder(tmp_path / "extra")
    (root / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        create_datasets(str(root))


class _FakeCifar(torch.utils.data.Dataset):
    """Stands in for torchvision's CIFAR classes (same constructor and ``classes``; PIL images)."""

    classes = [f"c{i}" for i in range(100)]

    def __init__(self, root: str, train: bool, transform: object, download: bool) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = np.random.default_rng(index).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        return self.transform(Image.fromarray(pixels)), index


def test_cifar_transforms(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", _FakeCifar)
    datasets, info = create_datasets("cifar100", auto_augment="rand-m9-mstd0.5-inc1", reprob=0.5)
    assert (info.num_classes, info.in_chans, info.img_size) == (100, 3, 32)
    assert datasets["train"][0][0].shape == (3, 32, 32) and datasets["val"][1][1] == 1


def test_missing_cifar_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar10 not found .*cifar-10-batches-py"):
        create_datasets("cifar10", str(tmp_path), download=False)


# ------------------------------------------------------------------------------------------ image decoding (issue 23)
def _folder_dataset(folder: Path) -> Any:
    """The images of ``folder`` (one class), decoded as training decodes them, untransformed (PIL images)."""
    from gsanet.train.data import CheckedImageDataset, FolderReader

    samples = [(str(path), 0) for path in sorted(folder.iterdir())]
    return CheckedImageDataset(str(folder), reader=FolderReader(folder, samples), input_img_mode="L")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """A camera's portrait photo is stored sideways with an EXIF orientation; it was read sideways."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (8, 12), dtype=np.uint8)  # 8 rows, 12 columns as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image is turned 90 degrees; viewers rotate it clockwise
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / "0.png", exif=exif)
    image, _ = _folder_dataset(folder)[0]
    expected = np.asarray(Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_270))
    assert image.size == (8, 12)  # width 8, height 12: upright
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_32bit_and_float_tiffs_are_scaled_not_black(tmp_path: Path) -> None:
    """32-bit integer and float TIFFs became black (PIL's convert clips them); they are scaled by their range."""
    rng = np.random.default_rng(2)
    levels = rng.uniform(0.0, 1.0, (6, 6))
    levels[0, 0], levels[0, 1] = 0.0, 1.0  # the full range is present
    folder = tmp_path / "tiffs"
    folder.mkdir()
    Image.fromarray((levels * 1000).astype(np.int32)).save(folder / "0_int32.tif")  # a 0..1000 range
    Image.fromarray(levels.astype(np.float32)).save(folder / "1_float01.tif")  # the float convention, 1.0 white
    Image.fromarray((levels * 40 - 10).astype(np.float32)).save(folder / "2_float_signed.tif")  # -10..30
    dataset = _folder_dataset(folder)
    for i, (scale, offset) in enumerate([(1000, 0), (1, 0), (40, -10)]):
        image = np.asarray(dataset[i][0], dtype=np.float64)
        stored = np.asarray(Image.open(sorted(folder.iterdir())[i]), dtype=np.float64)
        expected = (stored - offset) / scale * 255  # from the range's low end (0, or the negative minimum) to its top
        assert np.abs(image - expected).max() <= 0.5 + 1e-9, (i, image, expected)
        assert image.max() == 255 and image.min() == 0
    nan = levels.astype(np.float32)
    nan[2, 3] = np.nan
    Image.fromarray(nan).save(folder / "3_nan.tif")
    with pytest.raises(DataError, match="3_nan.tif: the image has NaN or infinite pixels"):
        _folder_dataset(folder)[3]


def test_every_registered_dataset_is_complete() -> None:
    """Each registry entry agrees with itself and names things that exist: its recipe file, its torchvision class."""
    import torchvision.datasets

    from gsanet.experiments.cli import recipe_path

    for name, spec in DATASETS.items():
        assert spec.name == name
        assert len(spec.mean) == len(spec.std) == spec.in_chans and all(s > 0 for s in spec.std)
        assert not spec.class_names or len(spec.class_names) == spec.num_classes
        assert recipe_path(name, None).is_file()
        assert spec.torchvision is None or hasattr(torchvision.datasets, spec.torchvision)
        assert (spec.torchvision is None) == (spec.folder is None)


def test_fashion_mnist_facts_come_from_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gsanet.train.data.SYSTEM_FASHION_MNIST_DIR", tmp_path / "none")
    write_fake_fashion_mnist(tmp_path / "fm")
    _, info = create_datasets("fashion-mnist", str(tmp_path / "fm"), splits=("val",), download=False)
    spec = DATASETS["fashion-mnist"]
    assert (info.num_classes, info.in_chans, info.img_size) == (spec.num_classes, spec.in_chans, spec.img_size)
    assert (info.mean, info.std, info.class_names) == (spec.mean, spec.std, spec.class_names)
    cfg = timm.get_pretrained_cfg("gsa_resnet26_tiny")
    assert (cfg.mean, cfg.std, tuple(cfg.label_names)) == (spec.mean, spec.std, spec.class_names)
