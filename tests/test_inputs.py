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

from .test_data import write_image_folder
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
    args = ["eval", "--checkpoint", str(folder_run), "--data", str(same), "--no-progress", "--output", str(tmp_path)]
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
    """Each item: whether SIGINT and SIGTERM are ignored in the process that loads it."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        import signal

        return torch.tensor([signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)])


def test_loader_workers_ignore_sigterm_and_sigint() -> None:
    """A SIGTERM sent to the whole process group (as a scheduler or ``timeout`` does) killed the loader workers, whose
    deaths then raised in the training process: a worker traceback and exit code 1 instead of the clean stop (exit
    143). The workers now ignore SIGINT and SIGTERM and leave them to the training process, which stops them."""
    from gsanet.train.data import create_loader
    from gsanet.train.distributed import DistContext

    ctx = DistContext(device=torch.device("cpu"))
    loader = create_loader(_SignalDispositions(), 2, train=False, ctx=ctx, workers=1)
    assert next(iter(loader)).tolist() == [[True, True], [True, True]]
