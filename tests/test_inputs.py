"""Issue 23, the inputs: data, command flags and resources checked before any work, each refusal one line (exit 2).

The config loader's and the environment switches' tests are in ``test_config.py`` and ``test_runtime.py``; image
decoding's in ``test_data.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gsanet.cli import main as gsanet_main

from .test_data import count_resized, write_image_folder
from .test_train import tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``gsanet <argv>``; assert it fails with one line and exit code 2; return the message."""
    code = gsanet_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    prefix = f"gsanet {argv[0]}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix) :].strip()


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch run on a two-class image folder (``class_0``, ``class_1``)."""
    root = tmp_path_factory.mktemp("folder_run")
    data = write_image_folder(root / "imgs", classes=2, per_class=4, size=12)
    args = tiny_args(root, root / "runs", "run", "--data", str(data), "--img-size", "16", "--batch-size", "4")
    assert gsanet_main(["train", *args]) == 0
    return root / "runs" / "run"


def test_eval_on_a_folder_with_other_class_names_is_refused(
    folder_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder with as many classes under other names was evaluated as if its sorted folders were the checkpoint's
    classes (100% on a copy with renamed folders); it is refused, naming the difference."""
    other = write_image_folder(tmp_path / "other", classes=2, per_class=2, size=12)
    for split in ("train", "val"):
        (other / split / "class_1").rename(other / split / "zebra")
    message = _one_error_line(["eval", "--checkpoint", str(folder_run), "--data", str(other), "--no-progress"], capsys)
    assert "has class folder(s) the model has no class for: zebra (its classes: class_0, class_1)" in message
    # a folder with the same classes under the same names is fine, wherever it is
    same = write_image_folder(tmp_path / "same", classes=2, per_class=2, size=12)
    shutil.rmtree(same / "train")
    args = ["eval", "--checkpoint", str(folder_run), "--data", str(same), "--no-progress", "--out", str(tmp_path)]
    assert gsanet_main(args) == 0, capsys.readouterr().err


def test_workers_bounded_by_the_usable_cpus(fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--workers 5000 ended in the OOM killer; more workers than usable CPUs (or than MAX_WORKERS) are refused."""
    from gsanet.train.config import MAX_WORKERS
    from gsanet.train.data import usable_cpus

    message = _one_error_line(["train", *tiny_args(fmnist, tmp_path, "w", "--workers", "5000")], capsys)
    assert message == f"workers must be in [0, {MAX_WORKERS}], got 5000"
    cpus = usable_cpus()
    message = _one_error_line(["train", *tiny_args(fmnist, tmp_path, "w", "--workers", str(cpus + 1))], capsys)
    assert message.startswith(f"--workers {cpus + 1} is more loader processes than this machine's {cpus} usable CPUs")
    assert not (tmp_path / "w").exists()


class _SignalDispositions(torch.utils.data.Dataset):
    """Each item: whether SIGINT is ignored, and whether SIGTERM has a handler of its own, in the loading process."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        import signal

        handler = signal.getsignal(signal.SIGTERM)
        return torch.tensor([signal.getsignal(signal.SIGINT) == signal.SIG_IGN, callable(handler)])


def test_loader_workers_ignore_sigint_and_exit_quietly_on_sigterm() -> None:
    """A SIGTERM sent to the whole process group (as a scheduler or ``timeout`` does) killed the loader workers, whose
    deaths then raised in the training process: a worker traceback and exit code 1 instead of the clean stop (exit
    143). The workers now ignore SIGINT and exit with status 0 on SIGTERM, which the loader does not report."""
    from gsanet.train.data import create_loader
    from gsanet.train.distributed import DistContext

    ctx = DistContext(device=torch.device("cpu"))
    loader = create_loader(_SignalDispositions(), 2, train=False, ctx=ctx, workers=1)
    assert next(iter(loader)).tolist() == [[True, True], [True, True]]


def test_process_exits_with_a_live_loader_iterator() -> None:
    """A process that ends while a loader iterator is alive (an error mid-epoch keeps it in the traceback) stops the
    workers with SIGTERM at exit and waits for them: workers that ignored SIGTERM made it wait forever."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from gsanet.train.data import create_loader\n"
        "from gsanet.train.distributed import DistContext\n"
        "loader = create_loader(torch.utils.data.TensorDataset(torch.arange(64.0)), 2, train=False,\n"
        "                       ctx=DistContext(device=torch.device('cpu')), workers=1)\n"
        "it = iter(loader)\n"
        "next(it)\n"
        "raise SystemExit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------- --holdout
def test_holdout_is_stratified(tmp_path: Path) -> None:
    """--holdout took a plain random split: a whole class could vanish from training (or from validation)."""
    from gsanet.errors import DataError
    from gsanet.train.data import create_datasets

    from .test_data import write_fake_fashion_mnist

    data = str(write_fake_fashion_mnist(tmp_path / "fm", n_train=60, n_val=10))  # 10 classes of 6 images

    def classes(ds: torch.utils.data.Dataset) -> list[int]:
        return sorted(int(ds[i][1]) for i in range(len(ds)))

    datasets, _ = create_datasets("fashion-mnist", data, holdout=10, augment=False)
    assert classes(datasets["val"]) == list(range(10))  # one held-out image of every class
    assert classes(datasets["train"]) == sorted(list(range(10)) * 5)
    datasets, _ = create_datasets("fashion-mnist", data, holdout=50, augment=False)
    assert classes(datasets["train"]) == list(range(10))  # every class keeps an image for training
    assert classes(datasets["val"]) == sorted(list(range(10)) * 5)
    with pytest.raises(DataError, match="at most 50 can be held out"):
        create_datasets("fashion-mnist", data, holdout=51)
    # an image folder, its classes of unequal sizes: held out in proportion, the same split for every seed
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=8, size=8)
    for i in range(4):
        (root / "train" / "class_1" / f"{i}.png").unlink()  # class_0: 8 images, class_1: 4
    folder = [create_datasets(str(root), holdout=6, img_size=8, seed=seed)[0] for seed in (0, 1)]
    assert folder[0]["val"].indices == folder[1]["val"].indices
    held = [folder[0]["val"].dataset.reader.samples[i][1] for i in folder[0]["val"].indices]
    assert sorted(held) == [0, 0, 0, 0, 1, 1]


def test_holdout_resizes_only_the_chosen_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--holdout resized all the training images before taking its split and the subset (2.7 GB for 64 images at
    96 px on the real Fashion-MNIST)."""
    from gsanet.train.data import create_datasets

    from .test_data import write_fake_fashion_mnist

    data = str(write_fake_fashion_mnist(tmp_path / "fm", n_train=64, n_val=8))
    resized = count_resized(monkeypatch)
    datasets, _ = create_datasets("fashion-mnist", data, img_size=20, holdout=10, train_subset=16, augment=True)
    assert (len(datasets["train"]), len(datasets["val"])) == (16, 10) and sum(resized) == 16 + 10


def test_resize_refusal_suggests_a_flag_that_helps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At a size whose images do not fit, --holdout's refusal suggested --train-subset, which did not help (the whole
    training set was resized anyway); the message now says how many images fit, and that many do."""
    from gsanet.errors import DataError
    from gsanet.train import data as data_mod

    from .test_data import write_fake_fashion_mnist

    data = str(write_fake_fashion_mnist(tmp_path / "fm", n_train=64, n_val=8))
    per_training_image = 2 * 96 * 96  # the resized image and its padded copy
    monkeypatch.setattr(data_mod, "available_memory", lambda: 2 * 10 * per_training_image)  # half: 10 images
    with pytest.raises(DataError) as info:
        data_mod.create_datasets("fashion-mnist", data, img_size=96, holdout=8, augment=True)
    assert str(info.value) == (
        "Fashion-MNIST train at 96x96: 56 images need 1.0 MiB in memory, more than half of the 0.4 MiB available; "
        "use a smaller --img-size or fewer images with --train-subset (at most 10 fit)"
    )
    datasets, _ = data_mod.create_datasets("fashion-mnist", data, img_size=96, holdout=8, train_subset=10)
    assert len(datasets["train"]) == 10


# ------------------------------------------------------------------------------------------- summary, visualize
@pytest.mark.parametrize("out", ["{file}", "/proc", "/proc/gsanet"])
def test_summary_out_that_cannot_be_written_is_one_line(
    out: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``summary --out`` a file or /proc ended in a traceback after the work; it is refused before it."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    out = out.format(file=a_file)
    argv = ["summary", "--models", "gsa_resnet26_tiny", "--img-size", "28", "--in-chans", "1", "--out", out]
    message = _one_error_line(argv, capsys)
    assert message.startswith(f"cannot write the summary to {out}: ") and message.endswith("; choose another --out")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["summary", "--in-chans", "0"], "argument --in-chans: must be >= 1, got 0"),
        (["summary", "--img-size", "100000"], "argument --img-size: sizes above 2048 are refused, got '100000'"),
        (["visualize", "--model", "gsa_resnet26_tiny", "--heads", "0"], "argument --heads: must be >= 1, got 0"),
        (["visualize", "--model", "gsa_resnet26_tiny", "--channels", "0"], "argument --channels: must be >= 1, got 0"),
        (
            ["visualize", "--model", "gsa_resnet26_tiny", "--img-size", "100000"],
            "argument --img-size: must be in 1..2048, got 100000 (larger inputs need more memory than a machine has)",
        ),
    ],
)
def test_summary_and_visualize_sizes_are_bounded(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``summary --in-chans 0``, ``visualize --heads 0`` gave tracebacks; ``summary --img-size 100000`` never ended
    and ``visualize --img-size 100000`` asked for the memory of no machine. Each is refused before any work."""
    message = _one_error_line([*argv, "--out", str(tmp_path / "out")], capsys)
    assert message.startswith(expected)


# ------------------------------------------------------------------------------------------ training memory
def test_training_step_beyond_memory_is_refused_before_it(
    fmnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training at --img-size 512 on Fashion-MNIST grew to 23.8 GB before the OOM killer: a step whose activations
    do not fit the available memory is refused before it, naming the --batch-size that fits."""
    from gsanet.train import engine
    from gsanet.train.engine import create_model, estimate_step_bytes

    from .test_train import TINY

    model = create_model(TINY, num_classes=10, in_chans=1, img_size=28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    per_image = estimate_step_bytes(model, 1, 28, 1)
    assert torch.equal(torch.get_rng_state(), rng)  # measured on a copy: the weights and random state are untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert estimate_step_bytes(model, 1, 28, 16) == pytest.approx(16 * per_image, rel=1e-6)
    assert estimate_step_bytes(model, 1, 56, 1, probe=28) == pytest.approx(4 * per_image, rel=1e-6)
    monkeypatch.setattr(engine, "available_memory", lambda: 5 * per_image)
    assert gsanet_main(["train", *tiny_args(fmnist, tmp_path, "big")]) == 2  # batch 16
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.splitlines()[-1].removeprefix("gsanet train: error: ")
    assert message.startswith("a training step at 28x28 with --batch-size 16 needs about ")
    assert message.endswith("MiB available on cpu; use --batch-size 5 or less, or a smaller --img-size")
    assert not (tmp_path / "big" / "checkpoints" / "last.safetensors").exists()
    assert gsanet_main(["train", *tiny_args(fmnist, tmp_path, "fits", "--batch-size", "4")]) == 0
