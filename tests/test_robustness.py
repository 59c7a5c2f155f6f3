"""Nothing lost, nothing wrong in silence (issue 13): checkpoints, resume, data and flags under interruption and
hostile input. Each test names the defect of the issue it guards (``d1`` ... ``d14``)."""

from __future__ import annotations

import csv
import errno
import gzip
import json
import math
import os
import shutil
import signal
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from gsanet import visualize
from gsanet.commands import setup_logging
from gsanet.config import resolve_config
from gsanet.errors import CheckpointError, ConfigError, DataError
from gsanet.train import checkpoint as ckpt_mod
from gsanet.train import eval_cli, train_cli, training
from gsanet.train.checkpoint import json_safe, load_checkpoint, read_metadata, save_checkpoint
from gsanet.train.config import TrainConfig
from gsanet.train.data import create_datasets
from gsanet.train.distributed import DistContext
from gsanet.train.engine import create_model
from gsanet.train.metadata import require_meta

from .test_data import count_resized, write_fake_fashion_mnist, write_idx, write_image_folder
from .test_train import TINY, finished_run, tiny_args

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py




@pytest.fixture(scope="module")
def one_epoch_run(fmnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run (64 images, batch 16: 4 updates per epoch); tests copy it before changing it."""
    return finished_run(fmnist, tmp_path_factory, 1)


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = train_cli.main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------------------------------- data loss
def test_d1_commit_stopped_between_last_and_best_is_completed(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up (or the process dies) after ``last`` records "best = this epoch", before ``best`` exists."""

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(ckpt_mod.shutil, "copyfile", full)
        code, _, err = _run(tiny_args(fmnist, tmp_path, "r"), capsys)
    assert code == 2 and "No space left on device" in err and "best.safetensors" in err
    ckpt_dir = tmp_path / "r" / "checkpoints"
    assert read_metadata(ckpt_dir / "last.safetensors")["best"]["epoch"] == 1
    assert not (ckpt_dir / "best.safetensors").exists() and not list(ckpt_dir.glob(".*.tmp"))
    # meanwhile, the run's best checkpoint is last (it is the best epoch)
    assert eval_cli.main(["--checkpoint", str(tmp_path / "r"), "--no-progress", "--out", str(tmp_path)]) == 0
    assert "epoch 1" in capsys.readouterr().out
    # the resume completes the commit
    assert _run(["--resume", str(tmp_path / "r")], capsys)[0] == 0
    best = read_metadata(ckpt_dir / "best.safetensors")
    assert best["epoch"] == 1 and best["run_id"] == read_metadata(ckpt_dir / "last.safetensors")["run_id"]


def test_d2_resume_from_an_older_checkpoint_is_refused_and_forks(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(one_epoch_run, tmp_path / "run")
    older = run / "checkpoints" / "epoch1.safetensors"
    shutil.copyfile(run / "checkpoints" / "last.safetensors", older)
    assert _run(["--resume", str(run), "--epochs", "2"], capsys)[0] == 0
    last_before = (run / "checkpoints" / "last.safetensors").read_bytes()
    code, _, err = _run(["--resume", str(older)], capsys)
    assert code == 2 and "older than the run's last checkpoint (epoch 2)" in err and "--name" in err
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == last_before
    assert [row["epoch"] for row in _metrics(run)] == ["1", "2"]
    # forking into a new directory keeps the original run intact
    code, out, _ = _run(["--resume", str(older), "--name", "fork", "--out", str(tmp_path), "--epochs", "2"], capsys)
    assert code == 0 and "epoch 2/2" in out
    fork = tmp_path / "fork"
    assert [row["epoch"] for row in _metrics(fork)] == ["1", "2"]
    forked = read_metadata(fork / "checkpoints" / "last.safetensors")
    assert forked["run_id"] != read_metadata(older)["run_id"] and (fork / "checkpoints" / "best.safetensors").is_file()
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == last_before


def test_d3_divergence_in_the_last_update_stops_and_saves_nothing_non_finite(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loss is checked before each step; the epoch's last update (here: NaN weights after it) must be caught."""
    real = training.train_one_epoch

    def last_update_diverges(model: torch.nn.Module, *args: object, **kwargs: object) -> dict:
        stats = real(model, *args, **kwargs)
        if args[3] == 1:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return stats

    monkeypatch.setattr(training, "train_one_epoch", last_update_diverges)
    code, _, err = _run(tiny_args(fmnist, tmp_path, "div", "--epochs", "3"), capsys)
    assert code == 2 and "diverged in epoch 2" in err and "last good checkpoint" in err
    for name in ("last", "best"):
        ckpt = load_checkpoint(tmp_path / "div" / "checkpoints" / f"{name}.safetensors")
        assert ckpt.meta["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in ckpt.model_state.values() if v.is_floating_point())
    summary = tmp_path / "div" / "summary.json"
    assert not summary.exists() or _strict_json(summary.read_text())


def test_d3_non_finite_flags_and_json(fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("inf", "nan"):
        assert train_cli.main([*tiny_args(fmnist, tmp_path, value), "--lr", value]) == 2
        assert "lr must be a finite number" in capsys.readouterr().err
    safe = json_safe({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}, "e": 2})
    assert json.dumps(safe, allow_nan=False) == '{"a": null, "b": [1.0, null], "c": {"d": null}, "e": 2}'


def test_d3_eval_and_resume_refuse_non_finite_weights(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = load_checkpoint(one_epoch_run / "checkpoints" / "last.safetensors")
    weights = dict(ckpt.model_state)
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = torch.full_like(weights[key], float("nan"))
    bad = tmp_path / "nan.safetensors"
    save_checkpoint(bad, ckpt.meta, weights, state=ckpt.state)
    assert eval_cli.main(["--checkpoint", str(bad), "--no-progress", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "non-finite weights" in err and key in err
    assert not (tmp_path / "nan-eval.json").exists()
    code, out, err = _run(["--resume", str(bad), "--epochs", "2"], capsys)
    assert code == 2 and "non-finite weights" in err and "epoch 2/2" not in out


# ------------------------------------------------------------------------------------------ wrong results in silence
def _expected_lr(epochs: int, updates_per_epoch: int, num_updates: int) -> float:
    from timm.scheduler import create_scheduler_v2

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    defaults = TrainConfig()
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=epochs, warmup_epochs=0, warmup_lr=defaults.warmup_lr,
        min_lr=defaults.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch,
    )  # fmt: skip
    scheduler.step_update(num_updates=num_updates)
    return optimizer.param_groups[0]["lr"]


def test_d4_resume_with_more_epochs_follows_the_new_schedule(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(one_epoch_run, tmp_path / "run")
    assert _run(["--resume", str(run), "--epochs", "3", "--stop-after", "1"], capsys)[0] == 0
    lr = float(_metrics(run)[1]["lr"])
    assert lr == pytest.approx(_expected_lr(3, 4, 8), rel=1e-9)
    assert lr > 100 * TrainConfig().min_lr  # not stuck at the minimum


def test_d4_resume_with_another_batch_size_rescales_the_schedule_position(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batch 32 instead of 16 halves the updates per epoch: epoch 2 must end at epoch 2's rate, not epoch 3's."""
    run = _copy_run(one_epoch_run, tmp_path / "run")
    code, _, err = _run(["--resume", str(run), "--epochs", "4", "--batch-size", "32", "--stop-after", "1"], capsys)
    assert code == 0 and "updates per epoch changed from 4 to 2" in err
    assert float(_metrics(run)[1]["lr"]) == pytest.approx(_expected_lr(4, 2, 4), rel=1e-9)
    assert read_metadata(run / "checkpoints" / "last.safetensors")["num_updates"] == 4


def _png16(path: Path, value: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint16)).save(path)


def test_d5_16bit_png_is_scaled_not_white(tmp_path: Path) -> None:
    for split in ("train", "val"):
        _png16(tmp_path / "d16" / split / "a" / "0.png", 20000)
        _png16(tmp_path / "d16" / split / "b" / "0.png", 60000)
        for name, value in (("a", 20000), ("b", 60000)):
            folder = tmp_path / "d8" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((12, 12), round(value / 257), dtype=np.uint8)).save(folder / "0.png")
    sixteen = create_datasets(str(tmp_path / "d16"), img_size=12, augment=False)[0]["val"]
    eight = create_datasets(str(tmp_path / "d8"), img_size=12, augment=False)[0]["val"]
    for i in range(2):
        torch.testing.assert_close(sixteen[i][0], eight[i][0])
    assert not torch.allclose(sixteen[0][0], sixteen[1][0])  # not both white


def test_d5_nested_images_belong_to_their_top_level_class(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=2)
    nested = {
        root / "train" / "class_0" / "class_1" / "x.png": 0,  # a subfolder named like another class
        root / "train" / "class_0" / "sub" / "deeper" / "y.png": 0,
        root / "train" / "class_1" / "sub" / "z.png": 1,
    }
    for path in nested:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "train" / "class_0" / "0.png", path)
    datasets, info = create_datasets(str(root), img_size=12)
    assert info.class_names == ("class_0", "class_1")
    samples = {Path(p): t for p, t in datasets["train"].reader.samples}
    assert len(samples) == 4 + len(nested)
    for path, label in nested.items():
        assert samples[path] == label


def _walk_in_thread(root: Path) -> dict:
    result: dict = {}

    def work() -> None:
        try:
            result["datasets"] = create_datasets(str(root), img_size=12)[0]
        except Exception as e:  # reported to the test below
            result["error"] = e

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "reading the folder hangs"
    return result


def test_d5_symlink_loops_neither_multiply_nor_hang(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    (root / "train" / "class_0" / "loop").symlink_to(root / "train" / "class_0", target_is_directory=True)
    result = _walk_in_thread(root)
    assert len(result["datasets"]["train"]) == 8
    (root / "train" / "class_1" / "up").symlink_to(root / "train", target_is_directory=True)
    (root / "train" / "class_1" / "again").symlink_to(root / "train" / "class_1", target_is_directory=True)
    result = _walk_in_thread(root)
    labels = sorted(t for _, t in result["datasets"]["train"].reader.samples)
    assert labels == [0] * 4 + [1] * 4


def test_d5_one_class_and_empty_class_are_rejected(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "one", classes=1)
    with pytest.raises(DataError, match="one class folder .*at least two"):
        create_datasets(str(root), img_size=12)
    root = write_image_folder(tmp_path / "empty", classes=2)
    (root / "train" / "class_2").mkdir()
    (root / "val" / "class_2").mkdir()
    with pytest.raises(DataError, match="class folder.*class_2.*hold no images"):
        create_datasets(str(root), img_size=12)


def test_d6_partial_fashion_mnist_in_data_dir_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gsanet.train.data.SYSTEM_FASHION_MNIST_DIR", write_fake_fashion_mnist(tmp_path / "system"))
    mine = write_fake_fashion_mnist(tmp_path / "mine", n_train=16)
    (mine / "t10k-labels-idx1-ubyte.gz").unlink()
    for download in (False, True):
        with pytest.raises(DataError, match=r"only part of Fashion-MNIST: t10k-labels-idx1-ubyte\(\.gz\) missing"):
            create_datasets("fashion-mnist", str(mine), download=download)


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [
        ("--clip-grad", "-1", "clip_grad must be a finite number > 0"),
        ("--clip-grad", "0", "clip_grad must be a finite number > 0"),
        ("--model-ema-decay", "5", "model_ema_decay must be in [0, 1)"),
        ("--lr", "nan", "lr must be a finite number"),
        ("--smoothing", "2", "smoothing must be in [0, 1)"),
        ("--min-lr", "-5", "min_lr must be a finite number >= 0"),
        ("--seed", "-1", "seed must be in [0, 4294967295]"),
        ("--drop-rate", "2", "drop_rate must be in [0, 1)"),
        ("--img-size", "10000", "img_size must be in [1, 2048]"),
        ("--model-kwargs", "checkpoint_path=/etc/passwd", "may not set checkpoint_path"),
    ],
)
def test_d7_bad_flags_are_one_line_errors(
    flag: str, value: str, fragment: str, fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(fmnist, tmp_path, "r", "--train-subset", "16", "--val-subset", "8")
    assert train_cli.main([*args, flag, value]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_d7_output_that_is_a_file(fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "hostname").write_text("x\n")
    args = tiny_args(fmnist, tmp_path / "hostname", "r", "--train-subset", "16", "--val-subset", "8")
    code, _, err = _run(args, capsys)
    assert code == 2 and "is a file, not a directory" in err


# ------------------------------------------------------------------------------------------------ unclear failures
def test_d8_full_disk_is_reported_before_the_first_epoch(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    code, out, err = _run(tiny_args(fmnist, tmp_path, "r"), capsys)
    assert code == 2 and "MiB free" in err and "epoch 1/" not in out


def test_d8_full_disk_while_saving_is_a_clear_error(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", full)
    code, _, err = _run(tiny_args(fmnist, tmp_path, "r", "--train-subset", "16", "--val-subset", "8"), capsys)
    assert code == 2 and "cannot write" in err and "free disk space" in err


def test_d8_read_only_run_directory_fails_before_training(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy_run(one_epoch_run, tmp_path / "run")
    epochs = []
    monkeypatch.setattr(training, "train_one_epoch", lambda *a, **k: epochs.append(1))

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", read_only)
    code, _, err = _run(["--resume", str(run), "--epochs", "2"], capsys)
    assert code == 2 and "Read-only file system" in err and "make the directory writable" in err and not epochs


def test_d8_eval_on_a_read_only_run_still_prints_the_accuracy(
    one_epoch_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(eval_cli, "plot_confusion_matrix", read_only)
    assert eval_cli.main(["--checkpoint", str(one_epoch_run), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "top-1" in out and "Read-only file system" in err and "--out" in err and "Traceback" not in err


def test_d9_visualize_bad_checkpoints(one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(image)
    data = (one_epoch_run / "checkpoints" / "last.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    for name in ("truncated", "garbage", "missing"):
        assert visualize.main(["--checkpoint", str(tmp_path / f"{name}.safetensors"), "--image", str(image)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gsanet visualize: error:") and "Traceback" not in err


def _with_meta(src: Path, dest: Path, meta: object) -> Path:
    """A copy of checkpoint ``src`` whose gsanet metadata is ``meta`` (a dict, or raw text)."""
    tensors = safetensors.torch.load_file(src)
    text = meta if isinstance(meta, str) else json.dumps(meta)
    safetensors.torch.save_file(tensors, dest, metadata={"format": "pt", "gsanet": text})
    return dest


def test_d10_checkpoint_metadata_is_untrusted(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = one_epoch_run / "checkpoints" / "last.safetensors"
    good = json.loads(safetensors.safe_open(str(src), framework="pt").metadata()["gsanet"])

    def variant(**changes: object) -> dict:
        meta = json.loads(json.dumps(good))
        for key, value in changes.items():
            target = meta
            *parents, leaf = key.split("__")
            for parent in parents:
                target = target[parent]
            target[leaf] = value
        return meta

    planted = tmp_path / "planted.pth"
    planted.write_bytes(b"not for you")
    cases = {
        "json": ('{"format": "gsanet-checkpoint/1", ', "not JSON"),
        "missing": ({"format": good["format"], "run_id": "x"}, "lacks the metadata model, model_args"),
        "kwargs": (variant(model_args__model_kwargs={"checkpoint_path": str(planted)}), "checkpoint_path"),
        "cfg": (variant(model_args__model_kwargs={"pretrained_cfg": {"file": str(planted)}}), "pretrained_cfg"),
        "size": (variant(model_args__img_size=10**7), "img_size must be an int in 1..2048"),
        "classes": (variant(model_args__num_classes="10"), "num_classes must be an int"),
        "epoch": (variant(epoch=-3), "epoch must be an int >= 0"),
    }
    import timm

    def no_create(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"timm.create_model reached with {kwargs}")

    monkeypatch.setattr(timm, "create_model", no_create)
    for name, (meta, fragment) in cases.items():
        path = _with_meta(src, tmp_path / f"{name}.safetensors", meta)
        assert eval_cli.main(["--checkpoint", str(path), "--no-progress"]) == 2, name
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, (name, err)
        with pytest.raises(CheckpointError):
            read_metadata(path) if name not in ("missing",) else require_meta(
                read_metadata(path), ("model", "model_args"), path
            )


def test_d10_create_model_refuses_loading_kwargs(tmp_path: Path) -> None:
    for kwargs in ({"checkpoint_path": str(tmp_path / "x.pth")}, {"pretrained": True}, {"img_size": 10**6}):
        with pytest.raises(ConfigError):
            create_model(TINY, num_classes=2, in_chans=1, model_kwargs=kwargs)


def test_d11_fashion_mnist_subset_is_taken_before_the_resize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_fashion_mnist(tmp_path, n_train=64, n_val=32)
    full = create_datasets("fashion-mnist", str(tmp_path), img_size=20, augment=True, seed=5)[0]["train"]
    resized = count_resized(monkeypatch)
    datasets, _ = create_datasets(
        "fashion-mnist", str(tmp_path), img_size=20, augment=True, seed=5, train_subset=8, val_subset=4
    )
    assert sum(resized) == 8 + 4
    # the subset holds, and augments, exactly the images the same subset of the full set holds
    ids = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:8].sort().values
    for epoch in (0, 3):
        full.set_epoch(epoch)
        datasets["train"].set_epoch(epoch)
        for i, index in enumerate(ids.tolist()):
            assert torch.equal(datasets["train"][i][0], full[index][0]) and datasets["train"][i][1] == full[index][1]
    with pytest.raises(DataError, match="img_size must be in 1..2048"):
        create_datasets("fashion-mnist", str(tmp_path), img_size=10000)


def test_d13_corrupt_files_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gsanet.train.data import read_idx

    raw = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 4, 0]) + bytes(1024))
    broken = bytearray(raw)
    broken[20] ^= 0xFF  # inside the deflate stream
    (tmp_path / "deflate.idx.gz").write_bytes(bytes(broken))
    with pytest.raises(DataError, match="cannot read idx file"):
        read_idx(tmp_path / "deflate.idx.gz")
    header = bytes([0, 0, 8, 3]) + (60000).to_bytes(4, "big") + (2**20).to_bytes(4, "big") * 2
    (tmp_path / "bomb.idx").write_bytes(header)
    with pytest.raises(DataError, match="corrupt"):
        read_idx(tmp_path / "bomb.idx")
    # float images where uint8 ones belong
    data = write_fake_fashion_mnist(tmp_path / "fm")
    write_idx(data / "train-images-idx3-ubyte.gz", torch.rand(64, 28, 28))
    with pytest.raises(DataError, match="float32 images"):
        create_datasets("fashion-mnist", str(data), download=False)
    # a decompression bomb in an image folder
    root = write_image_folder(tmp_path / "imgs", classes=2, size=40)
    datasets, _ = create_datasets(str(root), img_size=12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="too large to decode safely"):
        datasets["train"][0]


def test_d14_ctrl_c_names_the_run_and_files_have_one_mode(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = training.train_one_epoch

    def interrupted(model: torch.nn.Module, *args: object, **kwargs: object) -> dict:
        if args[3] == 1:
            raise KeyboardInterrupt
        return real(model, *args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", interrupted)
    code, _, err = _run(tiny_args(fmnist, tmp_path, "r", "--epochs", "2"), capsys)
    assert code == 130 and f"continue with: gsanet train --resume {tmp_path / 'r'}" in err and "<run dir>" not in err
    umask = os.umask(0)
    os.umask(umask)
    files = [tmp_path / "r" / "checkpoints" / f"{name}.safetensors" for name in ("last", "best")]
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o666 & ~umask}


def test_d14_stale_temporary_files_are_cleaned(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(one_epoch_run, tmp_path / "run")
    stale = [run / ".metrics.csv.k2j3.tmp", run / ".summary.json.x9.tmp"]
    stale.append(run / "checkpoints" / ".last.safetensors.a.tmp")
    for path in stale:
        path.write_bytes(b"half")
    assert _run(["--resume", str(run)], capsys)[0] == 0
    assert not any(path.exists() for path in stale)


def test_d14_sigterm_is_handled_like_ctrl_c(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM (sent to this process once the first checkpoint exists) stops the run like Ctrl-C, with a message."""
    last = tmp_path / "term" / "checkpoints" / "last.safetensors"

    def not_handled(signum: int, frame: object) -> None:  # stands in for the default handler, which would kill pytest
        raise AssertionError("gsanet train left SIGTERM to the default handler")

    def send_when_saved() -> None:
        deadline = time.monotonic() + 120
        while not last.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, not_handled)
    sender = threading.Thread(target=send_when_saved, daemon=True)
    try:
        sender.start()
        code, _, err = _run(tiny_args(fmnist, tmp_path, "term", "--epochs", "500"), capsys)
        sender.join(10)
        assert signal.getsignal(signal.SIGTERM) is not_handled  # the command put the previous handler back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 128 + signal.SIGTERM, err
    assert f"terminated (SIGTERM); continue with: gsanet train --resume {tmp_path / 'term'}" in err
    assert not list(last.parent.glob(".*.tmp")) and load_checkpoint(last).meta["epoch"] >= 1


def test_batchnorm_statistics_per_process_warning(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    cfg = TrainConfig(batch_size=8)
    two_cpu = DistContext(rank=0, world_size=2, device=torch.device("cpu"))
    message = training.warn_batchnorm(model, cfg, two_cpu)
    assert message is not None and "per process" in message and "no SyncBatchNorm on CPU" in message
    assert message in capsys.readouterr().err
    assert training.warn_batchnorm(model, cfg, DistContext()) is None  # one process: nothing to say
    assert training.warn_batchnorm(torch.nn.Conv2d(1, 2, 3), cfg, two_cpu) is None  # no BatchNorm
    readme = " ".join(README.read_text().split())
    assert "BatchNorm statistics are per process" in readme


def test_resolved_config_bounds_reach_the_checkpoint_config(tmp_path: Path) -> None:
    """A resumed checkpoint's config goes through the same validation as the flags."""
    with pytest.raises(ConfigError, match="checkpoint config|clip_grad"):
        resolve_config(TrainConfig, {}, base={"clip_grad": -1.0})
    assert math.isfinite(resolve_config(TrainConfig, {}, base={"clip_grad": 1.0}).clip_grad)
