"""``gsanet eval``: top-1/top-5, loss, images/s and a confusion matrix of a checkpoint.

Usage::

    gsanet eval --checkpoint runs/<run>                       # its best checkpoint, on the data it was trained on
    gsanet eval --checkpoint runs/<run>/checkpoints/last.safetensors --data-dir data --out reports/

The model name and arguments (classes, channels, input size, extra kwargs) come from the checkpoint's metadata and
are refused beyond ``--max-params`` before the model is built; without ``--data-dir`` the checkpoint's data directory
is read but never created or downloaded into (a checkpoint is untrusted: it chooses no path that is written);
the EMA weights are used when the checkpoint has them (``--no-ema`` for the raw weights). Writes
``<checkpoint stem>-eval.json`` and ``<checkpoint stem>-confusion.png`` next to the checkpoint or into ``--out``.
A checkpoint with NaN or infinite weights is refused, and so is data whose class names differ from the checkpoint's
(an image folder's classes are mapped by name; one with a class folder the checkpoint does not know is refused).
An explicit ``--out`` is checked for writing before the evaluation; when the default place (next to the
checkpoint, e.g. a read-only run) cannot be written, the results are still printed, with a warning that the report
was not saved.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from gsanet.commands import build_parser, resolve, run, setup_logging
from gsanet.datasets import DATASETS
from gsanet.errors import CheckpointError, ConfigError, DataError
from gsanet.files import ensure_writable

from .checkpoint import json_safe
from .config import EvalConfig, TrainConfig
from .data import DataInfo, check_workers, create_datasets, create_loader
from .distributed import DistContext, resolve_device
from .engine import evaluate, resolve_amp
from .plots import plot_confusion_matrix
from .rundir import LoadedModel, check_regular_file, load_model

__all__ = ["main", "run_evaluation"]

_logger = logging.getLogger("gsanet.eval")


def _load(cfg: EvalConfig) -> LoadedModel:
    """The checkpoint's model (EMA weights unless ``--no-ema``), after checking its config names its data."""
    if not cfg.checkpoint:
        raise ConfigError("--checkpoint is required: a .safetensors file or a run directory")
    loaded = load_model(cfg.checkpoint, ema=cfg.ema, require=("config", "epoch"), max_params=cfg.max_params)
    train_cfg = loaded.meta.config
    if not isinstance(train_cfg.get("data"), str) or not isinstance(train_cfg.get("data_dir"), str):
        raise CheckpointError(
            f"{loaded.path} has malformed metadata: config lacks data/data_dir; use another checkpoint"
        )
    return loaded


def _val_data(cfg: EvalConfig, loaded: LoadedModel) -> tuple[Any, DataInfo]:
    """The validation set to evaluate on (the checkpoint's own by default), checked against the model."""
    meta, path = loaded.meta, loaded.path
    train_cfg, model_args = meta.config, meta.model_args
    data = cfg.data or train_cfg["data"]
    trained_names = tuple(meta.data["class_names"])
    by_name = data == train_cfg["data"] or (data not in DATASETS and train_cfg["data"] not in DATASETS)  # two folders
    # the checkpoint's data directory (unless it is the default one) is read, never created or downloaded into
    data_dir = cfg.data_dir or train_cfg["data_dir"]
    try:
        datasets, info = create_datasets(
            data,
            data_dir,
            splits=("val",),
            download=cfg.download and (bool(cfg.data_dir) or data_dir == TrainConfig.data_dir),
            img_size=model_args.img_size,
            model_name=meta.model,
            val_subset=cfg.val_subset,
            class_names=trained_names if by_name else None,  # an image folder's classes are then mapped by name
        )
    except DataError as e:
        if cfg.data_dir or data_dir == TrainConfig.data_dir:
            raise
        raise DataError(
            f"{e} (the data directory {data_dir} is the checkpoint's, which is only read, never downloaded into: "
            "pass --data-dir to choose one)"
        ) from e
    if info.num_classes != model_args.num_classes or info.in_chans != model_args.in_chans:
        raise DataError(
            f"{path} was trained for {model_args.num_classes} classes of {model_args.in_chans}-channel images, "
            f"but {data} has {info.num_classes} classes of {info.in_chans}-channel images; evaluate on "
            f"--data {train_cfg['data']} (or a dataset with the same classes)"
        )
    if tuple(info.class_names) != trained_names:
        raise DataError(
            f"{path} was trained on other classes than {data} has ({_class_difference(trained_names, info.class_names)}"
            f"); evaluate on data with the checkpoint's classes, e.g. --data {train_cfg['data']}"
        )
    return datasets["val"], info


def _class_difference(trained: tuple[str, ...], found: tuple[str, ...]) -> str:
    """What differs between the checkpoint's class names and the data's, for an error message."""

    def names(items: list[str]) -> str:
        return ", ".join(items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10 else "")

    missing = [n for n in trained if n not in found]
    unknown = [n for n in found if n not in trained]
    parts = [f"not in the data: {names(missing)}"] if missing else []
    parts += [f"unknown to the checkpoint: {names(unknown)}"] if unknown else []
    return "; ".join(parts) or "the same names in another order"


def _write_report(report: dict[str, Any], confusion: Any, info: DataInfo, out_dir: Path, stem: str) -> None:
    """Write the confusion matrix and the JSON report into ``out_dir``; warn (do not fail) when it cannot be written."""
    report_path = out_dir / f"{stem}-eval.json"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        confusion_png = plot_confusion_matrix(
            confusion,
            info.class_names,
            out_dir / f"{stem}-confusion.png",
            title=f"{report['model']} on {Path(info.name).name}",
        )
        report["confusion_png"] = str(confusion_png)
        report_path.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
        report["report"] = str(report_path)
    except OSError as e:
        _logger.warning(
            "could not write the report and confusion matrix in %s (%s); pass --out DIR to keep them",
            out_dir, e.strerror or e,
        )  # fmt: skip


def run_evaluation(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint``; write the report and confusion matrix; return the report.

    Raises:
        UserError: Bad checkpoint, data that does not match it, or a bad config.
    """
    check_workers(cfg.workers)
    loaded = _load(cfg)
    if cfg.out:
        ensure_writable(cfg.out)  # before the work: an explicit --out must take the report
    out_dir = Path(cfg.out) if cfg.out else loaded.path.parent
    for name in (f"{loaded.path.stem}-eval.json", f"{loaded.path.stem}-confusion.png"):
        check_regular_file(out_dir / name)  # a FIFO in their place would block the writer forever
    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp(cfg.amp, device)
    dataset, info = _val_data(cfg, loaded)
    model = loaded.model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ctx = DistContext(device=device)
    loader = create_loader(dataset, cfg.batch_size, train=False, ctx=ctx, workers=cfg.workers)
    stats = evaluate(
        model,
        loader,
        device,
        num_classes=info.num_classes,
        ctx=ctx,
        amp_dtype=amp_dtype,
        channels_last=cfg.channels_last,
        progress=cfg.progress,
    )
    report = {
        "checkpoint": str(loaded.path),
        "model": loaded.meta.model,
        "weights": loaded.weights,
        "epoch": loaded.meta.epoch,
        "data": info.name,
        "images": stats["count"],
        "top1": stats["top1"],
        "top5": stats["top5"],
        "loss": stats["loss"],
        "images_per_s": stats["images_per_s"],
        "device": str(device),
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "none",
        "confusion_matrix": stats["confusion"].tolist(),
        "class_names": list(info.class_names),
    }
    _write_report(report, stats["confusion"], info, out_dir, loaded.path.stem)
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gsanet eval``; returns the exit code (0 ok, 2 bad input)."""
    return run("eval", _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser(EvalConfig, "gsanet eval", "Evaluate a checkpoint written by gsanet train.").parse_args(argv)
    cfg = resolve(EvalConfig, args)
    with logging_redirect_tqdm([setup_logging()]):
        report = run_evaluation(cfg)
    print(
        f"{report['model']} ({report['weights']} weights, epoch {report['epoch']}) on {report['data']}, "
        f"{report['images']} images: top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%  "
        f"loss {report['loss']:.4f}  {report['images_per_s']:.0f} img/s"
    )
    if "report" in report:
        print(f"confusion matrix: {report['confusion_png']}")
        print(f"report: {report['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
