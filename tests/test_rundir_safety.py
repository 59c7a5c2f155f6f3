"""Nothing lost when runs meet each other (issue 23, run directories and checkpoint metadata): one writer per run
directory, checkpoints that choose no path and allocate nothing unbounded, run files that cannot hang a reader, and an
empty run that can be started again. Each test is named after the defect it guards."""

from __future__ import annotations

import csv
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from gsanet.errors import ConfigError
from gsanet.train import checkpoint as ckpt_mod
from gsanet.train import eval_cli, rundir, train_cli, training
from gsanet.train.checkpoint import read_metadata
from gsanet.train.config import TrainConfig
from gsanet.train.rundir import RunDir, RunLock

from .test_train import TINY, finished_run, tiny_args
from .test_train import train as _train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def two_epoch_run(fmnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run (64 images, batch 16); tests copy it before changing it."""
    return finished_run(fmnist, tmp_path_factory, 2)


def _epochs(run: Path) -> list[str]:
    with open(run / "metrics.csv") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def _planted(src: Path, dest: Path, change: Callable[[dict], None]) -> Path:
    """A copy of checkpoint ``src`` whose gsanet metadata ``change`` has edited (schema-valid, but hostile)."""
    with safetensors.safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["gsanet"])
    change(meta)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tensors = safetensors.torch.load_file(src)
    safetensors.torch.save_file(tensors, dest, metadata={"format": "pt", "gsanet": json.dumps(meta)})
    return dest


# --------------------------------------------------------------------------------------------------- the lock
def test_resume_refused_while_run_is_live(two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = Path(shutil.copytree(two_epoch_run, tmp_path / "run"))
    names = ("metrics.csv", "summary.json", "checkpoints/last.safetensors")
    before = {name: (run / name).read_bytes() for name in names}
    live = RunLock.acquire(run)  # the training process of the run (a lock from another open file: flock conflicts)
    try:
        code, _, err = _train(["--resume", str(run), "--epochs", "3"], capsys)
    finally:
        live.release()
    assert code == 2 and f"is in use by pid {os.getpid()} on " in err and "since" in err
    assert {name: (run / name).read_bytes() for name in before} == before
    assert _train(["--resume", str(run), "--epochs", "3"], capsys)[0] == 0  # the run ended: its lock is gone
    assert _epochs(run) == ["1", "2", "3"]


def test_run_holds_its_lock_while_training(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real, refused = training.train_one_epoch, []

    def second_writer(*args: object, **kwargs: object) -> dict:
        with pytest.raises(ConfigError, match="is in use by pid") as error:
            RunLock.acquire(tmp_path / "r")
        refused.append(str(error.value))
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", second_writer)
    assert _train(tiny_args(fmnist, tmp_path, "r"), capsys)[0] == 0
    assert len(refused) == 1 and RunDir(tmp_path / "r").lock.is_file()
    RunLock.acquire(tmp_path / "r").release()  # released at the end of the run


def test_lock_without_fcntl_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rundir, "fcntl", None)
    with caplog.at_level("WARNING", logger="gsanet"):
        lock = RunLock.acquire(tmp_path)
    assert not lock.held and "is not locked" in caplog.text
    lock.release()


# ------------------------------------------------------------------------------------ checkpoints choose no path
def test_checkpoint_outside_run_dir_forks(
    two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "downloads"
    folder.mkdir()
    shutil.copyfile(two_epoch_run / "checkpoints" / "last.safetensors", folder / "m.safetensors")
    mine = {name: f"the user's own {name}\n" for name in ("config.yaml", "summary.json", "metrics.csv")}
    for name, text in mine.items():
        (folder / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    code, _, _ = _train(["--resume", str(folder / "m.safetensors"), "--epochs", "3"], capsys)
    assert code == 0
    assert {name: (folder / name).read_text() for name in mine} == mine
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "m.safetensors", "metrics.csv", "summary.json"]
    (fork,) = (tmp_path / "runs").iterdir()
    assert _epochs(fork) == ["1", "2", "3"] and (fork / "checkpoints" / "best.safetensors").is_file()


def test_fork_of_untrusted_checkpoint_writes_under_the_users_output(
    two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = tmp_path / "elsewhere" / "deep"

    def change(meta: dict) -> None:
        meta["config"]["out"] = str(evil)

    planted = _planted(two_epoch_run / "checkpoints" / "last.safetensors", tmp_path / "evil.safetensors", change)
    monkeypatch.chdir(tmp_path)
    assert _train(["--resume", str(planted), "--name", "new", "--epochs", "3"], capsys)[0] == 0
    assert not (tmp_path / "elsewhere").exists()
    assert _epochs(tmp_path / "runs" / "new") == ["1", "2", "3"]


def test_eval_never_downloads_into_the_checkpoints_data_dir(
    two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = tmp_path / "planted-data"

    def change(meta: dict) -> None:
        meta["config"]["data_dir"] = str(evil)

    planted = _planted(two_epoch_run / "checkpoints" / "last.safetensors", tmp_path / "ckpt" / "m.safetensors", change)
    downloads = []

    def fake_download(root: str, **kwargs: object) -> None:
        downloads.append(root)
        raise RuntimeError("no network in the tests")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    monkeypatch.setattr("gsanet.train.data.SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-copy")
    assert eval_cli.main(["--checkpoint", str(planted), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "never downloaded into" in err and "--data-dir" in err and "Traceback" not in err
    assert downloads == [] and not evil.exists()


# ------------------------------------------------------------------------------------------- bounded resources
@pytest.fixture
def real_models_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a model anywhere but on the meta device fails the test: refusals must come before allocation."""
    import timm

    real = timm.create_model

    def meta_only(*args: object, **kwargs: object) -> torch.nn.Module:
        if torch.empty(0).device.type != "meta":
            raise AssertionError(f"a real model was built with {kwargs}")
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", meta_only)


@pytest.mark.usefixtures("real_models_refused")
def test_checkpoint_model_size_is_bounded_before_allocation(
    two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = two_epoch_run / "checkpoints" / "last.safetensors"

    def huge(meta: dict) -> None:  # 34 billion parameters: 135 GB
        meta["model"] = meta["config"]["model"] = "gsa_resnet26_tiny"
        meta["model_args"]["model_kwargs"] = {"width_mult": 64}

    def wide(meta: dict) -> None:  # the weights are the small model's: refused before the wide one is built
        meta["model_args"].update(num_classes=10**6, in_chans=1024)

    def headless(meta: dict) -> None:
        meta["model"] = "gsa_resnet26_tiny"
        meta["model_args"]["model_kwargs"] = {"gsa_kwargs": {"heads": 0}}

    cases = {
        "huge": (huge, ["--max-params 1,000,000,000", "raise --max-params"]),
        "wide": (wide, ["does not fit"]),
        "headless": (headless, ["heads must be >= 1"]),
    }
    for name, (change, fragments) in cases.items():
        planted = _planted(src, tmp_path / f"{name}.safetensors", change)
        assert eval_cli.main(["--checkpoint", str(planted), "--no-progress"]) == 2, name
        err = capsys.readouterr().err
        assert all(f in err for f in fragments) and "Traceback" not in err, (name, err)
        assert err.count("\n") == 1, err
    # a limit of the user's, never of the checkpoint's: lowering it refuses the tiny model too
    assert eval_cli.main(["--checkpoint", str(src), "--max-params", "1000", "--no-progress"]) == 2
    assert "more than --max-params 1,000" in capsys.readouterr().err


@pytest.mark.usefixtures("real_models_refused")
def test_resume_of_oversized_checkpoint_is_refused(
    two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def huge(meta: dict) -> None:
        meta["model"] = meta["config"]["model"] = "gsa_resnet26_tiny"
        meta["model_args"]["model_kwargs"] = meta["config"]["model_kwargs"] = {"width_mult": 64}
        meta["config"]["max_params"] = 10**12  # a checkpoint cannot raise the limit

    planted = _planted(two_epoch_run / "checkpoints" / "last.safetensors", tmp_path / "huge.safetensors", huge)
    code, _, err = _train(["--resume", str(planted), "--out", str(tmp_path), "--name", "f"], capsys)
    assert code == 2 and "raise --max-params" in err


def test_model_kwargs_the_model_rejects_are_one_line_errors(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for kwargs in (["width_mult=0"], ["gsa_kwargs={heads: 0}"]):
        args = [*tiny_args(fmnist, tmp_path, "r"), "--model", "gsa_resnet26_tiny", "--model-kwargs", *kwargs]
        code, _, err = _train(args, capsys)
        assert code == 2 and "rejects its arguments" in err and "fix --model or --model-kwargs" in err, err
        shutil.rmtree(tmp_path / "r", ignore_errors=True)


# ---------------------------------------------------------------------------------------- files that would hang
def _with_deadline(
    main: Callable[[list[str]], int], args: list[str], timeout: float, unblock: list[Path]
) -> int | None:
    """``main(args)`` (a command) with a deadline; a FIFO it blocks on is opened from the other end to free it."""
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(args)), daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for fifo in unblock:
            for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):
                try:
                    os.close(os.open(fifo, flags))
                except OSError:
                    pass
        thread.join(30)
    return codes[0] if codes else None


@pytest.mark.parametrize("name", ["config.yaml", "command.txt", "metrics.csv"])
def test_resume_refuses_fifo_in_run_dir(
    two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    run = Path(shutil.copytree(two_epoch_run, tmp_path / "run"))
    (run / name).unlink()
    os.mkfifo(run / name)
    code = _with_deadline(train_cli.main, ["--resume", str(run), "--epochs", "3"], 60, [run / name])
    err = capsys.readouterr().err
    assert code == 2 and f"{run / name} is a FIFO" in err and "Traceback" not in err, err
    assert _epochs_in_last(run) == 2


def test_eval_refuses_fifo_report(two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "last-eval.json"
    os.mkfifo(report)
    checkpoint = two_epoch_run / "checkpoints" / "last.safetensors"
    args = ["--checkpoint", str(checkpoint), "--out", str(tmp_path), "--no-progress"]
    code = _with_deadline(eval_cli.main, args, 60, [report])
    err = capsys.readouterr().err
    assert code == 2 and f"{report} is a FIFO" in err, err


def _epochs_in_last(run: Path) -> int:
    return read_metadata(RunDir(run).last)["epoch"]


def test_tensorboard_that_is_a_file_is_a_one_line_error(
    two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(shutil.copytree(two_epoch_run, tmp_path / "run"))
    shutil.rmtree(run / "tensorboard")
    (run / "tensorboard").write_text("not a directory")
    code, _, err = _train(["--resume", str(run), "--epochs", "3"], capsys)
    assert code == 2 and "tensorboard is a file, not a directory" in err


# ---------------------------------------------------------------------------------------- split and schedule
def test_resume_with_another_holdout_is_refused(fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _train([*tiny_args(fmnist, tmp_path, "r"), "--holdout", "16"], capsys)[0] == 0
    run = tmp_path / "r"
    for changed in (["--holdout", "8"], ["--holdout", "none"], ["--seed", "1"]):
        code, _, err = _train(["--resume", str(run), "--epochs", "2", *changed], capsys)
        assert code == 2 and "held-out validation images" in err and "fork with --name" in err, (changed, err)
    assert _epochs(run) == ["1"]
    assert _train(["--resume", str(run), "--epochs", "2"], capsys)[0] == 0  # unchanged: the run's own holdout
    assert _epochs(run) == ["1", "2"]


def test_epochs_below_epochs_done_are_refused(
    two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(shutil.copytree(two_epoch_run, tmp_path / "run"))
    code, _, err = _train(["--resume", str(run), "--epochs", "1"], capsys)
    assert code == 2 and "fewer than the 2 epochs" in err and "--epochs 2 or more" in err
    assert _epochs(run) == ["1", "2"]


def test_warmup_longer_than_the_run_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="longer than the run"):
        TrainConfig(epochs=2, warmup_epochs=3)
    code, _, err = _train(["--epochs", "1", "--warmup-epochs", "2"], capsys)
    assert code == 2 and "lower --warmup-epochs or raise --epochs" in err


# ------------------------------------------------------------------------------------------------- full disk
def _full_disk(*args: object, **kwargs: object) -> None:
    raise safetensors.SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )


def test_full_disk_while_saving_a_checkpoint_is_a_one_line_error(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ckpt_mod, "save_file", _full_disk)
    code, _, err = _train(tiny_args(fmnist, tmp_path, "r"), capsys)
    assert code == 2 and "No space left on device" in err and "free disk space" in err
    assert not list((tmp_path / "r" / "checkpoints").iterdir())


def test_fork_checks_disk_space_before_its_first_commit(
    two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    args = ["--resume", str(two_epoch_run), "--out", str(tmp_path), "--name", "fork", "--epochs", "3"]
    code, _, err = _train(args, capsys)
    assert code == 2 and "MiB free" in err
    assert not RunDir(tmp_path / "fork").last.exists()


# ------------------------------------------------------------------------------------------------ empty runs
def test_run_that_failed_before_its_first_checkpoint_can_be_resumed(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> dict:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(training, "train_one_epoch", interrupted)
        code, _, err = _train(tiny_args(fmnist, tmp_path, "r"), capsys)
    run = tmp_path / "r"
    assert code == 130 and f"start it again with: gsanet train --resume {run}" in err
    assert not RunDir(run).last.exists()
    code, _, err = _train(tiny_args(fmnist, tmp_path, "r"), capsys)  # the same --name: pointed to --resume
    assert code == 2 and "no checkpoint yet: --resume starts it again" in err
    assert _train(["--resume", str(run)], capsys)[0] == 0
    assert _epochs(run) == ["1"] and read_metadata(RunDir(run).best)["epoch"] == 1
    assert TINY in (run / "config.yaml").read_text()


def test_a_run_stored_with_the_former_output_key_resumes_in_place(
    two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run written before ``output`` became ``out`` (checkpoint metadata and config.yaml) continues where it is."""
    import yaml

    run = Path(shutil.copytree(two_epoch_run, tmp_path / "runs" / "old"))

    def former(config: dict) -> dict:
        config = {("output" if k == "out" else k): v for k, v in config.items()}
        return {**config, "output": str(run.parent), "name": run.name}

    def change(meta: dict) -> None:
        meta["config"] = former(meta["config"])

    last = run / "checkpoints" / "last.safetensors"
    _planted(last, last, change)
    (run / "config.yaml").write_text(yaml.safe_dump(former(yaml.safe_load((run / "config.yaml").read_text()))))
    with safetensors.safe_open(str(last), framework="pt") as f:
        stored = json.loads(f.metadata()["gsanet"])["config"]
    assert "output" in stored and "out" not in stored and read_metadata(last)["config"]["out"] == str(run.parent)
    code, _, err = _train(["--resume", str(run), "--epochs", "3"], capsys)
    assert code == 0, err
    assert _epochs(run) == ["1", "2", "3"] and sorted(p.name for p in run.parent.iterdir()) == ["old"]
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["out"] == str(run.parent) and "output" not in stored
