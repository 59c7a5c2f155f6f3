"""``gsanet eval``: top-1/top-5, loss, images/s and a confusion matrix of a checkpoint.

Usage::

    gsanet eval --checkpoint runs/<run>                       # its best checkpoint, on the data it was trained on
    gsanet eval --checkpoint runs/<run>/checkpoints/last.safetensors --data-dir data --output reports/

The model name and arguments (classes, channels, input size, extra kwargs) come from the checkpoint's metadata;
the EMA weights are used when the checkpoint has them (``--no-ema`` for the raw weights). Writes
``<checkpoint stem>-eval.json`` and ``<checkpoint stem>-confusion.png`` next to the checkpoint or into ``--output``.
A checkpoint with NaN or infinite weights is refused. An explicit ``--output`` is checked for writing before the
evaluation; when the default place (next to the checkpoint, e.g. a read-only run) cannot be written, the results are
still printed, with a warning that the report was not saved.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from .checkpoint import (
    best_checkpoint,
    check_finite,
    check_state_dict,
    ensure_writable,
    json_safe,
    load_checkpoint,
    require_meta,
)
from .cli import configure_logging
from .config import (
    CheckpointError,
    ConfigError,
    DataError,
    EvalConfig,
    TrainError,
    build_parser,
    error_message,
    resolve_config,
)
from .data import create_datasets, create_loader
from .distributed import DistContext, resolve_device
from .engine import create_model, evaluate, resolve_amp
from .plots import plot_confusion_matrix

__all__ = ["main", "run_evaluation"]

_logger = logging.getLogger("gsanet.eval")


def _checkpoint_file(path: Path) -> Path:
    return best_checkpoint(path) if path.is_dir() else path


def run_evaluation(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint``; write the report and confusion matrix; return the report.

    Raises:
        TrainError: Bad checkpoint, data that does not match it, or a bad config.
    """
    if not cfg.checkpoint:
        raise ConfigError("--checkpoint is required: a .safetensors file or a run directory")
    path = _checkpoint_file(Path(cfg.checkpoint))
    checkpoint = load_checkpoint(path, with_state=cfg.ema)
    meta = checkpoint.meta
    require_meta(meta, ("model", "model_args", "data", "config", "epoch"), path)
    train_cfg, model_args = meta["config"], meta["model_args"]
    if not isinstance(train_cfg.get("data"), str) or not isinstance(train_cfg.get("data_dir"), str):
        raise CheckpointError(f"{path} has malformed metadata: config lacks data/data_dir; use another checkpoint")
    if cfg.output:
        ensure_writable(cfg.output)  # before the work: an explicit --output must take the report
    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp(cfg.amp, device)
    data = cfg.data or train_cfg["data"]
    same_data = data == train_cfg["data"]
    datasets, info = create_datasets(
        data,
        cfg.data_dir or train_cfg["data_dir"],
        splits=("val",),
        download=cfg.download,
        img_size=model_args["img_size"],
        model_name=meta["model"],
        val_subset=cfg.val_subset,
        class_names=meta["data"]["class_names"] if same_data else None,
    )
    if info.num_classes != model_args["num_classes"] or info.in_chans != model_args["in_chans"]:
        raise DataError(
            f"{path} was trained for {model_args['num_classes']} classes of {model_args['in_chans']}-channel images, "
            f"but {data} has {info.num_classes} classes of {info.in_chans}-channel images; evaluate on "
            f"--data {train_cfg['data']} (or a dataset with the same classes)"
        )
    model = create_model(meta["model"], **model_args)
    weights = checkpoint.ema_state if cfg.ema and checkpoint.ema_state is not None else checkpoint.model_state
    check_state_dict(model.state_dict(), weights, model_name=meta["model"], checkpoint_model=meta["model"], path=path)
    check_finite(weights, path, "EMA weights" if weights is checkpoint.ema_state else "weights")
    model.load_state_dict(weights)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ctx = DistContext(device=device)
    loader = create_loader(datasets["val"], cfg.batch_size, train=False, ctx=ctx, workers=cfg.workers)
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
    out_dir = Path(cfg.output) if cfg.output else path.parent
    report = {
        "checkpoint": str(path),
        "model": meta["model"],
        "weights": "ema" if weights is checkpoint.ema_state else "model",
        "epoch": meta["epoch"],
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
    report_path = out_dir / f"{path.stem}-eval.json"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        confusion_png = plot_confusion_matrix(
            stats["confusion"],
            info.class_names,
            out_dir / f"{path.stem}-confusion.png",
            title=f"{meta['model']} on {Path(info.name).name}",
        )
        report["confusion_png"] = str(confusion_png)
        report_path.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
        report["report"] = str(report_path)
    except OSError as e:
        _logger.warning(
            "could not write the report and confusion matrix in %s (%s); pass --output DIR to keep them",
            out_dir, e.strerror or e,
        )  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gsanet eval``; returns the exit code (0 ok, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(EvalConfig, "gsanet eval", "Evaluate a checkpoint written by gsanet train.")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    explicit = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        cfg = resolve_config(EvalConfig, explicit, getattr(args, "config", None))
        with logging_redirect_tqdm([configure_logging()]):
            report = run_evaluation(cfg)
    except TrainError as e:
        print(f"gsanet eval: error: {error_message(e)}", file=sys.stderr)
        return 2
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
