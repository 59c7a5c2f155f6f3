"""``gsanet train`` / ``gsanet eval`` end to end on tiny synthetic data: artifacts, resume, SIGKILL, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gsanet.errors import CheckpointError
from gsanet.train import eval_cli, train_cli, training
from gsanet.train.checkpoint import load_checkpoint, read_checkpoint_meta, read_metadata
from gsanet.train.config import TrainConfig
from gsanet.train.metadata import RESUME_KEYS
from gsanet.train.rundir import RunDir, load_model, read_summary
from tests.shipped import export_weights

from .test_data import write_fake_fashion_mnist, write_image_folder

TINY = "test_efficientnet_gn"  # timm's 0.1M-parameter test model (GroupNorm: no batch statistics)
SUMMARY_KEYS = {
    "val_top1",
    "val_top5",
    "val_loss",
    "epochs",
    "params",
    "train_seconds",
    "model",
    "data",
    "images_per_s",
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_args(data_dir: Path, output: Path, name: str, *extra: str) -> list[str]:
    return [
        "--data-dir", str(data_dir), "--model", TINY, "--batch-size", "16", "--epochs", "1", "--warmup-epochs", "0",
        "--lr", "0.01", "--no-progress", "--out", str(output), "--name", name, *extra,
    ]  # fmt: skip


def finished_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, epochs: int) -> Path:
    """A finished run of ``epochs`` epochs (64 images, batch 16: 4 updates an epoch), for module-scoped fixtures that
    tests copy before changing it."""
    output = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    assert train_cli.main(tiny_args(data_dir, output, "base", "--epochs", str(epochs))) == 0
    return output / "base"


def train(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = train_cli.main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture(scope="module")
def trained_run(fmnist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    output = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    args = tiny_args(fmnist, output, "one", "--epochs", "2", "--stop-after", "1")
    code = train_cli.main(args)
    assert code == 0
    return output / "one", " ".join(args)


def test_one_epoch_run_writes_everything(trained_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run, args = trained_run
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert {"train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["epochs"] == 1 and summary["epochs_planned"] == 2 and not summary["finished"]
    assert summary["params"] > 0 and summary["train_seconds"] > 0 and 0 <= summary["val_top1"] <= 100
    for png in ("loss.png", "accuracy.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config == {**config, "model": TINY, "batch_size": 16, "epochs": 2, "name": "one"}
    assert TrainConfig(**config).lr == 0.01
    assert args in (run / "command.txt").read_text()
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    last = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert last.meta["epoch"] == 1 and last.meta["model"] == TINY and "optimizer" in last.state
    assert load_checkpoint(run / "checkpoints" / "best.safetensors").meta["epoch"] == 1


def test_run_dir_contract(trained_run: tuple[Path, str], tmp_path: Path) -> None:
    """The run directory's files are where RunDir says; the typed summary and metadata read back what was written,
    key for key and in order; load_model gives the best checkpoint's model in eval mode."""
    run, _ = trained_run
    paths = RunDir(run)
    for path in (paths.config, paths.command, paths.summary, paths.metrics, paths.last, paths.best):
        assert path.is_file(), path
    assert paths.tensorboard.is_dir()
    written = json.loads(paths.summary.read_text())
    summary = read_summary(run)
    assert summary is not None and list(summary.to_dict().items()) == list(written.items())
    raw = read_metadata(paths.last)
    stored = {k: v for k, v in raw.items() if k not in ("format", "has_ema", "state")}
    assert list(read_checkpoint_meta(paths.last, RESUME_KEYS).to_dict().items()) == list(stored.items())
    loaded = load_model(run)
    assert loaded.path == paths.best and loaded.weights == "model" and not loaded.model.training
    assert loaded.meta.model == TINY and loaded.meta.epoch == 1
    weights = load_checkpoint(paths.best).model_state
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)
    assert read_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text('{"epochs": "one"}')
    with pytest.raises(CheckpointError, match="malformed epochs"):
        read_summary(tmp_path)


def test_export_weights(trained_run: tuple[Path, str], tmp_path: Path) -> None:
    """The shipped weight files are made from a run's last checkpoint: its model weights, nothing else."""
    from safetensors.torch import load_file

    run, _ = trained_run
    dest = export_weights(run, tmp_path / "w.safetensors", model_name=TINY)
    exported, last = load_file(str(dest)), load_checkpoint(RunDir(run).last).model_state
    assert set(exported) == set(last)
    for key, value in last.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"holds {TINY}"):
        export_weights(run, tmp_path / "x.safetensors", model_name="gsa_resnet26_tiny")

def test_command_prints_where_results_are(fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = train(tiny_args(fmnist, tmp_path, "r", "--train-subset", "32", "--val-subset", "16"), capsys)
    assert code == 0
    assert "epoch 1/1" in out and "ETA" in out and "img/s" in out
    assert f"plots: {tmp_path / 'r' / 'loss.png'}" in out and f"summary: {tmp_path / 'r' / 'summary.json'}" in out
    # the run directory is never reused silently
    code, _, err = train(tiny_args(fmnist, tmp_path, "r"), capsys)
    assert code == 2 and "already exists" in err and "--resume" in err


def test_auto_named_run_dirs_do_not_collide(fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = tiny_args(fmnist, tmp_path, "x", "--train-subset", "16", "--val-subset", "8")
    args = args[: args.index("--name")]
    assert train(args, capsys)[0] == 0 and train(args, capsys)[0] == 0
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert len(runs) == 2 and all(name.startswith(f"{TINY}-fashion-mnist-") for name in runs)


def test_training_options(fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Mixup/cutmix (soft-target loss), gradient clipping, channels-last, EMA, bf16, another optimizer and schedule."""
    extra = ["--mixup", "0.8", "--cutmix", "1.0", "--clip-grad", "1.0", "--channels-last", "--model-ema"]
    extra += ["--amp", "bf16", "--opt", "lamb", "--sched", "poly", "--warmup-epochs", "0.5", "--epochs", "2"]
    code, out, _ = train(tiny_args(fmnist, tmp_path, "opts", *extra), capsys)
    assert code == 0 and "EMA top-1" in out
    summary = json.loads((tmp_path / "opts" / "summary.json").read_text())
    assert summary["weights"] == "ema" and summary["amp"] == "bfloat16" and summary["epochs"] == 2


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    out = {f"model.{k}": v for k, v in ckpt.model_state.items()}
    out.update({f"ema.{k}": v for k, v in (ckpt.ema_state or {}).items()})
    for index, state in ckpt.state["optimizer"]["state"].items():
        out.update({f"opt.{index}.{k}": v for k, v in state.items()})
    return out


def test_resume_matches_uninterrupted_run(fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--epochs", "3", "--model-ema", "--model-ema-decay", "0.9", "--warmup-epochs", "1", "--augment"]
    assert train(tiny_args(fmnist, tmp_path, "straight", *common), capsys)[0] == 0
    assert train(tiny_args(fmnist, tmp_path, "resumed", *common, "--stop-after", "1"), capsys)[0] == 0
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.safetensors").meta["epoch"] == 1
    code, out, _ = train(["--resume", str(tmp_path / "resumed"), "--stop-after", "1", "--no-progress"], capsys)
    assert code == 0 and "epoch 2/3" in out
    code, out, _ = train(["--resume", str(tmp_path / "resumed" / "checkpoints" / "last.safetensors")], capsys)
    assert code == 0 and "epoch 3/3" in out

    straight = _tensors(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    resumed = _tensors(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    assert straight.keys() == resumed.keys() and any(k.startswith("ema.") for k in straight)
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    with open(tmp_path / "straight" / "metrics.csv") as a, open(tmp_path / "resumed" / "metrics.csv") as b:
        columns = ("epoch", "lr", "train_loss", "val_loss", "val_top1", "ema_val_loss")
        assert [[r[c] for c in columns] for r in csv.DictReader(a)] == [
            [r[c] for c in columns] for r in csv.DictReader(b)
        ]
    assert len((tmp_path / "resumed" / "command.txt").read_text().splitlines()) == 3


def test_sigkill_leaves_a_loadable_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_fake_fashion_mnist(tmp_path / "data", n_train=256, n_val=32)
    args = tiny_args(data, tmp_path, "killed", "--epochs", "50")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "gsanet.cli", "train", *args], env=env, stderr=subprocess.PIPE)
    last = tmp_path / "killed" / "checkpoints" / "last.safetensors"
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint in 120 s"
        code, _, err = train(["--resume", str(tmp_path / "killed")], capsys)  # the run is live: a second writer
        assert code == 2 and f"is in use by pid {proc.pid} on " in err, err
        time.sleep(0.4)  # into the next epoch, or into the next checkpoint write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    epoch = load_checkpoint(last).meta["epoch"]
    assert 1 <= epoch < 50
    code, out, _ = train(["--resume", str(tmp_path / "killed"), "--stop-after", "1"], capsys)  # the lock died too
    assert code == 0 and f"epoch {epoch + 1}/50" in out
    assert not list(last.parent.glob(".*.tmp"))


def test_eval_command(trained_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = trained_run
    code = eval_cli.main(["--checkpoint", str(run), "--out", str(tmp_path), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "top-1" in out and "top-5" in out and "img/s" in out
    report = json.loads((tmp_path / "best-eval.json").read_text())
    assert {"top1", "top5", "loss", "images_per_s", "model", "confusion_matrix"} <= set(report)
    assert report["model"] == TINY and report["images"] == 32
    assert sum(map(sum, report["confusion_matrix"])) == 32
    assert (tmp_path / "best-confusion.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((run / "summary.json").read_text())
    assert report["top1"] == pytest.approx(summary["val_top1"])
    # default output: next to the checkpoint
    last = run / "checkpoints" / "last.safetensors"
    assert eval_cli.main(["--checkpoint", str(last), "--no-progress", "--val-subset", "8"]) == 0
    assert (last.parent / "last-confusion.png").exists() and (last.parent / "last-eval.json").exists()


def test_final_test_evaluates_the_test_split_once_after_the_last_epoch(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--holdout validates on held-out training images every epoch; --final-test then scores the final weights on
    the test split, exactly as ``gsanet eval`` does, and a run stopped early or killed before the test gets it on
    --resume."""
    args = tiny_args(fmnist, tmp_path, "tested", "--holdout", "16", "--final-test", "--epochs", "2")
    code, out, _ = train([*args, "--stop-after", "1"], capsys)
    assert code == 0 and "final test" not in out  # the schedule is not finished: no test yet
    code, out, _ = train(["--resume", str(tmp_path / "tested"), "--no-progress"], capsys)
    assert code == 0 and out.count("final test top-1") == 1
    run = tmp_path / "tested"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_images"] == 32 and summary["finished"]  # the fake set's 32 test images, not the 16 held out
    assert eval_cli.main(["--checkpoint", str(run / "checkpoints" / "last.safetensors"), "--out", str(tmp_path / "e"),
                          "--no-progress", "--data", "fashion-mnist", "--data-dir", str(fmnist)]) == 0  # fmt: skip
    report = json.loads((tmp_path / "e" / "last-eval.json").read_text())
    assert report["images"] == 32
    assert summary["test_top1"] == pytest.approx(report["top1"])
    assert summary["test_loss"] == pytest.approx(report["loss"])
    capsys.readouterr()
    # killed between the last epoch and the test: the summary is missing; --resume runs no epoch, only the test
    (run / "summary.json").unlink()
    code, out, _ = train(["--resume", str(run), "--no-progress"], capsys)
    assert code == 0 and "epoch 2/2" not in out and "final test top-1" in out
    assert json.loads((run / "summary.json").read_text())["test_top1"] == pytest.approx(summary["test_top1"])
    _fails(tiny_args(fmnist, tmp_path, "untested", "--final-test"), capsys, "final_test needs holdout")


# ------------------------------------------------------------------------------------------------------ bad input
def _fails(args: list[str], capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    code, _, err = train(args, capsys)
    assert code == 2, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_missing_and_empty_dataset_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_args(tmp_path, tmp_path / "runs", "x")
    _fails([*base, "--data", str(tmp_path / "nope")], capsys, "does not exist", "train/ and val/")
    (tmp_path / "empty").mkdir()
    _fails([*base, "--data", str(tmp_path / "empty")], capsys, "no train/ subfolder", "<data>/train/<class>")
    for split in ("train", "val"):
        (tmp_path / "noimg" / split / "a").mkdir(parents=True)
    _fails([*base, "--data", str(tmp_path / "noimg")], capsys, "no images found")
    assert not (tmp_path / "runs" / "x").exists(), "a failed start leaves no run directory"


def test_unreadable_image_stops_and_keeps_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=8)
    args = tiny_args(tmp_path, tmp_path, "img", "--data", str(root), "--img-size", "16", "--batch-size", "8")
    assert train([*args, "--epochs", "3", "--stop-after", "1", "--workers", "1"], capsys)[0] == 0
    bad = root / "train" / "class_1" / "3.png"
    bad.write_bytes(b"\x89PNG broken")
    err = _fails(["--resume", str(tmp_path / "img")], capsys, f"cannot read image {bad}", "last good checkpoint")
    assert "DataLoader worker" not in err
    assert load_checkpoint(tmp_path / "img" / "checkpoints" / "last.safetensors").meta["epoch"] == 1


def test_checkpoint_of_another_model(trained_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = trained_run
    _fails(["--resume", str(run), "--model", "test_byobnet"], capsys, f"holds a {TINY} model", f"--model {TINY}")


def test_bad_resume_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["--resume", str(tmp_path / "nothing")], capsys, "no such run directory")
    (tmp_path / "run").mkdir()
    _fails(["--resume", str(tmp_path / "run")], capsys, "has no checkpoints/last.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    _fails(["--resume", str(tmp_path / "x.safetensors")], capsys, "not a readable safetensors file")


def test_bad_configs(fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nbatchsize: 16\n")
    _fails(["--config", str(recipe)], capsys, "unknown key(s) batchsize", "valid keys are: model,")
    recipe.write_text("epochs: one\n")
    _fails(["--config", str(recipe)], capsys, "epochs must be int")
    _fails([*tiny_args(fmnist, tmp_path, "y"), "--model", "gsa_resnet_nope"], capsys, "unknown model")
    _fails([*tiny_args(fmnist, tmp_path, "y"), "--amp", "fp16", "--device", "cpu"], capsys, "use --amp bf16")
    code, _, err = train(["--epochs", "three"], capsys)  # argparse: usage + exit code 2
    assert code == 2 and "invalid int value" in err


def test_non_finite_loss_stops_and_keeps_the_checkpoint(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = training.train_one_epoch

    def poisoned(model: torch.nn.Module, *args: object, **kwargs: object) -> dict:
        if args[3] == 1:  # second epoch: the weights blow up
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", poisoned)
    _fails(
        tiny_args(fmnist, tmp_path, "nan", "--epochs", "3"),
        capsys,
        "the training loss is nan at epoch 2, step 1",
        "--clip-grad",
        "last good checkpoint",
        f"--resume {tmp_path / 'nan'}",
    )
    last = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.safetensors")
    assert last.meta["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last.model_state.values() if v.is_floating_point())
    # the summary records the divergence (an experiment counts it as an outcome, not a run to retry)
    summary = read_summary(tmp_path / "nan")
    assert summary.finished is False and summary.epochs == 1 and "loss is nan at epoch 2" in summary.diverged


def test_eval_bad_input(trained_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_cli.main(["--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert eval_cli.main([]) == 2
    assert "--checkpoint is required" in capsys.readouterr().err
    run, _ = trained_run
    root = write_image_folder(tmp_path / "imgs", classes=3)
    assert eval_cli.main(["--checkpoint", str(run), "--data", str(root), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "trained for 10 classes of 1-channel images" in err and "Traceback" not in err
