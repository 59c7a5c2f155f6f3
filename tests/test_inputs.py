"""Issue 23, the inputs: data, command flags and resources checked before any work, each refusal one line (exit 2).

The config loader's and the environment switches' tests are in ``test_config.py`` and ``test_runtime.py``; image
decoding's in ``test_data.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
