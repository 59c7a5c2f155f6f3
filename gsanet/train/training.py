"""The training run behind ``gsanet train``: named steps sharing one :class:`TrainingRun`.

* :func:`prepare_run`: the config (defaults < ``--config`` < flags, or the resumed checkpoint's config as the base), the
  distributed context, and the resumed checkpoint, read once;
* :func:`build`: datasets, loaders, model (with the resumed weights), EMA, optimizer, schedule and precision;
* :func:`restore_progress`: the training state and progress of the resumed checkpoint (or a fresh start);
* :func:`wrap_model`: ``torch.compile`` and DDP;
* :func:`open_run`: the run directory (created for a new run or a fork) with its config, command line and first
  files;
* :func:`fit`: the epochs, a checkpoint commit and a metrics row after each; then :func:`finish` writes the curves
  and ``summary.json``.

Determinism: every epoch starts by reseeding the global generators, the sampler, the loader's worker seeds and the
augmentation from (seed, epoch, rank), and checkpoints carry the optimizer, scheduler, EMA, scaler and RNG states.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, unwrap_model
from torch import nn

import gsanet
from gsanet.config import config_to_dict, resolve_config
from gsanet.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, UserError
from gsanet.files import ensure_writable

from .checkpoint import (
    Checkpoint,
    capture_rng_state,
    check_finite,
    check_state_dict,
    clean_stale_tmp,
    commit_checkpoints,
    load_checkpoint,
    nonfinite_names,
    read_checkpoint_meta,
    repair_best,
    restore_rng_state,
)
from .config import TrainConfig
from .data import DataInfo, check_workers, create_datasets, create_loader, epoch_seed, set_epoch
from .distributed import DistContext, barrier, broadcast_text, init_distributed
from .engine import (
    EpochOptions,
    check_step_memory,
    create_model,
    evaluate,
    resolve_amp,
    seed_everything,
    train_one_epoch,
)
from .metadata import RESUME_KEYS, CheckpointMeta, ModelArgs, RunSummary
from .plots import plot_curves
from .rundir import (
    ResumeTarget,
    RunDir,
    RunLock,
    append_command,
    check_model_size,
    check_resume_lineage,
    check_run_files,
    create_run_dir,
    read_run_config,
    resume_target,
    write_config,
    write_metrics_csv,
    write_summary,
)

__all__ = [
    "INVOCATION_ONLY",
    "NOT_FROM_CHECKPOINT",
    "TrainingRun",
    "build",
    "epoch_line",
    "finish",
    "fit",
    "format_seconds",
    "open_run",
    "prepare_run",
    "restore_progress",
    "run_training",
    "warn_batchnorm",
    "wrap_model",
]

_logger = logging.getLogger("gsanet.train")

INVOCATION_ONLY = ("config", "resume", "stop_after")
"""``gsanet train`` arguments that are not config fields."""

NOT_FROM_CHECKPOINT = ("out", "name", "data_dir", "max_params")
"""Config keys a resumed checkpoint (or an empty run's ``config.yaml``) never sets, as they are untrusted: where the
run is written comes from ``--resume`` (continued in place) or the flags (a fork), the model-size limit from the
flags, and the data directory from ``--data-dir`` (the checkpoint's is only read, never created or downloaded into:
see :func:`prepare_run`)."""


@dataclass
class RunData:
    """The data of a run (:func:`build_data`)."""

    info: DataInfo
    datasets: dict[str, Any]
    train_loader: Any
    val_loader: Any


@dataclass
class TrainState:
    """The model and what trains it (:func:`build_state`); :func:`wrap_model` compiles ``model`` and wraps it for DDP.

    Attributes:
        model: The model (with the resumed weights).
        model_args: The arguments it was built with (:func:`~gsanet.train.engine.create_model`).
        params: Its parameter count.
        model_ema: Its EMA, if the config keeps one.
        optimizer, lr_scheduler, amp_dtype, scaler: The optimiser, the schedule (None: constant), the autocast dtype
            (None: float32) and the float16 gradient scaler.
    """

    model: nn.Module
    model_args: ModelArgs
    params: int
    model_ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    amp_dtype: torch.dtype | None
    scaler: Any


@dataclass
class Progress:
    """How far a run is (fresh, or from the resumed checkpoint's metadata: :func:`restore_progress`); :func:`fit`
    advances it."""

    run_id: str = ""
    start_epoch: int = 0
    num_updates: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "top1": -1.0})


@dataclass
class TrainingRun:
    """A training run: the invocation, and the typed products of its steps.

    Attributes:
        cfg: The resolved config.
        argv: The command line (for ``command.txt``).
        ctx: The distributed context.
        stop_after: Epochs to run in this invocation (None: to the end).
        run_dir: The run directory (None until :func:`open_run` makes a new one).
        checkpoint: The checkpoint resumed from (released by :func:`restore_progress`).
        resume_from: Its file.
        fork: Whether the resumed run continues in a new run directory.
        lock: The lock of the run directory held by this process (rank 0), released by :func:`run_training`.
        read_only_data: The data directory comes from the checkpoint: read it, never download into it.
        data: The data (:func:`build`).
        state: The model and its training state (:func:`build`).
        progress: The progress (:func:`restore_progress`, :func:`fit`).
        writer: The TensorBoard writer of rank 0, if any.
    """

    cfg: TrainConfig
    argv: Sequence[str]
    ctx: DistContext
    stop_after: int | None = None
    run_dir: Path | None = None
    checkpoint: Checkpoint | None = None
    resume_from: Path | None = None
    fork: bool = False
    lock: RunLock | None = None
    read_only_data: bool = False
    data: RunData | None = None
    state: TrainState | None = None
    progress: Progress = field(default_factory=Progress)
    writer: Any = None

    @property
    def paths(self) -> RunDir:
        """The paths of the run directory."""
        assert self.run_dir is not None
        return RunDir(self.run_dir)

    def meta(self, epoch: int) -> CheckpointMeta:
        """The checkpoint metadata after ``epoch`` epochs."""
        return CheckpointMeta(
            run_id=self.progress.run_id,
            model=self.cfg.model,
            model_args=self.state.model_args,
            data=dataclasses.asdict(self.data.info),
            config=config_to_dict(self.cfg),
            world_size=self.ctx.world_size,
            updates_per_epoch=len(self.data.train_loader),
            versions={"gsanet": gsanet.__version__, "torch": torch.__version__, "timm": timm.__version__},
            epoch=epoch,
            num_updates=self.progress.num_updates,
            train_seconds=self.progress.train_seconds,
            history=self.progress.history,
            best=self.progress.best,
            saved=datetime.now().isoformat(timespec="seconds"),
        )

    def commit(self, epoch: int) -> None:
        """Write ``last`` (and ``best`` when this epoch is the best) with the full training state."""
        commit_checkpoints(
            self.paths.checkpoints,
            self.meta(epoch).to_dict(),
            unwrap_model(self.state.model).state_dict(),
            ema_state=self.state.model_ema.module.state_dict() if self.state.model_ema is not None else None,
            state=_training_state(self.state.optimizer, self.state.scaler),
        )


def run_training(args: argparse.Namespace, argv: Sequence[str]) -> RunSummary:
    """Train as ``args`` say; return the summary (also written to ``summary.json`` by rank 0).

    Raises:
        UserError: Bad config, data or checkpoint, a run directory that cannot be written, or divergence.
        KeyboardInterrupt: Ctrl-C or SIGTERM; its ``run_dir`` attribute is the run directory (None before it exists).
    """
    run: TrainingRun | None = None
    try:
        run = prepare_run(args, argv)
        build(run)
        restore_progress(run)
        wrap_model(run)
        open_run(run)
        try:
            fit(run)
        except NonFiniteLossError as e:
            record_divergence(run, e)
            raise
        return finish(run)
    except KeyboardInterrupt as e:
        e.run_dir = run.run_dir if run is not None else None
        raise
    finally:
        if run is not None and run.lock is not None:
            run.lock.release()


# ---------------------------------------------------------------------------------------------- prepare_run
def _is_rank0() -> bool:
    """Whether this process is rank 0 (``torchrun`` sets ``RANK``; read before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class _Resumed:
    """What ``--resume`` brings into :func:`prepare_run`: the target, its metadata (None for an empty run) and the
    config it was trained with (``source``), before the untrusted keys are dropped."""

    target: ResumeTarget
    fork: bool
    meta: CheckpointMeta | None
    source: dict[str, Any]

    @property
    def base(self) -> dict[str, Any]:
        """The config values the resumed run starts from (:data:`NOT_FROM_CHECKPOINT` dropped; in place, the place and
        name of the run directory itself, as recorded when they name it)."""
        base = {k: v for k, v in self.source.items() if k not in NOT_FROM_CHECKPOINT}
        if not self.fork:
            run_dir, out, name = self.target.run_dir, self.source.get("out"), self.source.get("name")
            recorded = isinstance(out, str) and isinstance(name, str) and bool(name)
            if recorded and (Path(out) / name).resolve() == run_dir.resolve():
                base.update(out=out, name=name)
            else:
                base.update(out=str(run_dir.parent), name=run_dir.name)
        return base


def _read_resumed(args: argparse.Namespace, explicit: dict[str, Any]) -> tuple[_Resumed, RunLock | None]:
    """Read what ``--resume`` names; a run continued in place is locked first (rank 0), so that its ``last`` cannot
    change between this read and the end of the run.

    Raises:
        UserError: A bad target, a live run (locked by another process), or a malformed checkpoint.
    """
    target = resume_target(args.resume)
    fork = "name" in explicit or "out" in explicit or target.run_dir is None
    if target.empty and fork:
        raise CheckpointError(
            f"{target.run_dir} has no checkpoint to fork (it stopped before its first epoch ended); start it again "
            f"with --resume {target.run_dir} alone"
        )
    lock = RunLock.acquire(target.run_dir) if not fork and _is_rank0() else None
    try:
        if not fork:
            check_run_files(target.run_dir)
        if target.empty:
            _logger.info("%s has no checkpoint yet: starting it from scratch with its config.yaml", target.run_dir)
            return _Resumed(target, fork, None, read_run_config(target.run_dir)), lock
        meta = read_checkpoint_meta(target.checkpoint, RESUME_KEYS)
        if not fork:
            check_resume_lineage(target.checkpoint, meta, target.run_dir)
        elif target.run_dir is None:
            _logger.info("%s is not in a run directory: forking it into a new run directory", target.checkpoint)
        return _Resumed(target, fork, meta, meta.config), lock
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _check_resumed_config(cfg: TrainConfig, resumed: _Resumed) -> None:
    """Refuse a resumed config that cannot continue the run: fewer epochs than done, a model beyond the limits, or
    (in place) another validation split.

    Raises:
        ConfigError: What is wrong and what to do instead.
    """
    meta = resumed.meta
    if meta is None:
        return
    if cfg.epochs < meta.epoch:
        raise ConfigError(
            f"--epochs {cfg.epochs} is fewer than the {meta.epoch} epochs {resumed.target.checkpoint} has done; give "
            f"--epochs {meta.epoch} or more"
        )
    fix = f"the checkpoint {resumed.target.checkpoint} cannot be used"
    check_model_size(meta.model, meta.model_args, cfg.max_params, fix)
    fixed = ["holdout", "seed"] if meta.config.get("holdout") is not None or cfg.holdout is not None else []
    changed = [k for k in fixed if meta.config.get(k, getattr(TrainConfig(), k)) != getattr(cfg, k)]
    if changed and not resumed.fork:
        was = ", ".join(f"{k} {meta.config.get(k)!r}" for k in changed)
        raise ConfigError(
            f"the run was trained with {was}, which choose its held-out validation images: changing them mid-run "
            f"would validate on images it trained on; resume with the same values, or fork with --name <new name>"
        )
    if changed:
        _logger.warning(
            "the fork changes %s: its validation images may include images the checkpoint was trained on",
            ", ".join(changed),
        )


def prepare_run(args: argparse.Namespace, argv: Sequence[str]) -> TrainingRun:
    """The config, the distributed context and the resumed checkpoint (read once) of a ``gsanet train`` command.

    A run continued in place is locked (:class:`RunLock`) before its checkpoint is read. The resumed checkpoint's
    config is the base of the config, without :data:`NOT_FROM_CHECKPOINT`; when no ``--data-dir`` is given, its data
    directory is used for reading only (no download into it).

    Raises:
        UserError: A bad config or flag, an unusable checkpoint, a live run, or a run directory that cannot be
            written.
    """
    explicit = {k: v for k, v in vars(args).items() if k not in INVOCATION_ONLY}
    resumed, lock = _read_resumed(args, explicit) if getattr(args, "resume", None) else (None, None)
    try:
        run = _resolve_run(args, argv, explicit, resumed)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run.lock = lock
    return run


def _resolve_run(
    args: argparse.Namespace, argv: Sequence[str], explicit: dict[str, Any], resumed: _Resumed | None
) -> TrainingRun:
    cfg = resolve_config(TrainConfig, explicit, getattr(args, "config", None), resumed.base if resumed else None)
    read_only_data = False
    if resumed is not None:
        _check_resumed_config(cfg, resumed)
        data_dir = resumed.source.get("data_dir")
        if isinstance(data_dir, str) and "data_dir" not in explicit and cfg.data_dir == TrainConfig.data_dir:
            cfg, read_only_data = dataclasses.replace(cfg, data_dir=data_dir), data_dir != TrainConfig.data_dir
    stop_after = getattr(args, "stop_after", None)
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after must be >= 1, got {stop_after}")
    ctx = init_distributed(cfg.device)
    if cfg.sync_bn and ctx.distributed and ctx.device.type != "cuda":
        raise ConfigError(
            "--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); on CPU drop it or use a model without "
            "BatchNorm"
        )
    checkpoint_path = resumed.target.checkpoint if resumed else None
    checkpoint = load_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    run_dir = resumed.target.run_dir if resumed and not resumed.fork else None
    fork = resumed is not None and resumed.fork
    run = TrainingRun(cfg, list(argv), ctx, stop_after, run_dir, checkpoint, checkpoint_path, fork)
    run.read_only_data = read_only_data
    if run_dir is not None and ctx.is_main:
        ensure_writable(run.paths.checkpoints)  # before any work: a read-only run fails now, not in an hour
    return run


# ---------------------------------------------------------------------------------------------------- build
def _model_args(cfg: TrainConfig, info: DataInfo) -> ModelArgs:
    return ModelArgs(
        num_classes=info.num_classes,
        in_chans=info.in_chans,
        img_size=info.img_size,
        drop_rate=cfg.drop_rate,
        drop_path_rate=cfg.drop_path_rate,
        model_kwargs=dict(cfg.model_kwargs),
    )


def build_data(cfg: TrainConfig, ctx: DistContext, read_only_data: bool = False) -> RunData:
    """The datasets and loaders of a run (rank 0 downloads first; the others then find the files).

    Raises:
        DataError: The data is missing, empty or unreadable.
    """
    if ctx.distributed and not ctx.is_main:
        barrier(ctx)
    check_workers(cfg.workers)  # before the data is read
    try:
        datasets, info = create_datasets(
            cfg.data,
            cfg.data_dir,
            download=cfg.download and ctx.is_main and not read_only_data,
            img_size=cfg.img_size,
            model_name=cfg.model,
            augment=cfg.augment,
            auto_augment=cfg.auto_augment,
            reprob=cfg.reprob,
            seed=cfg.seed,
            train_subset=cfg.train_subset,
            val_subset=cfg.val_subset,
            holdout=cfg.holdout,
        )
    except DataError as e:
        if not read_only_data:
            raise
        raise DataError(
            f"{e} (the data directory {cfg.data_dir} is the checkpoint's, which is only read, never downloaded into: "
            "pass --data-dir to choose one)"
        ) from e
    if ctx.distributed and ctx.is_main:
        barrier(ctx)
    kwargs = {"ctx": ctx, "seed": cfg.seed, "workers": cfg.workers}
    train_loader = create_loader(datasets["train"], cfg.batch_size, train=True, **kwargs)
    val_loader = create_loader(datasets["val"], cfg.batch_size, train=False, **kwargs)
    return RunData(info, datasets, train_loader, val_loader)


def _build_model(
    cfg: TrainConfig, ctx: DistContext, info: DataInfo, model_args: ModelArgs, checkpoint: Checkpoint | None
) -> nn.Module:
    skeleton = check_model_size(cfg.model, model_args, cfg.max_params, "fix --model or --model-kwargs")
    if checkpoint is not None:  # checked on the meta-device skeleton: nothing is allocated for weights that do not fit
        check_state_dict(
            skeleton.state_dict(),
            checkpoint.model_state,
            model_name=cfg.model,
            checkpoint_model=checkpoint.meta.get("model"),
            path=checkpoint.path,
        )
        check_finite(checkpoint.model_state, checkpoint.path)
    model = create_model(cfg.model, **model_args.kwargs())
    check_step_memory(model, info.in_chans, info.img_size, cfg.batch_size, ctx.device)  # before a step
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model_state)
    if cfg.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    warn_batchnorm(model, cfg, ctx)
    model.to(ctx.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def build_state(
    cfg: TrainConfig, ctx: DistContext, info: DataInfo, updates_per_epoch: int, checkpoint: Checkpoint | None = None
) -> TrainState:
    """The model (with the resumed weights of ``checkpoint``), its EMA, optimizer, schedule and precision.

    Raises:
        UserError: An unknown model, or resumed weights that do not fit it.
    """
    model_args = _model_args(cfg, info)
    model = _build_model(cfg, ctx, info, model_args, checkpoint)
    model_ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    lr_scheduler = None
    if cfg.sched != "none":
        lr_scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=cfg.sched,
            num_epochs=cfg.epochs,
            warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr,
            min_lr=cfg.min_lr,
            step_on_epochs=False,
            updates_per_epoch=updates_per_epoch,
        )
    amp_dtype = resolve_amp(cfg.amp, ctx.device)
    return TrainState(
        model=model,
        model_args=model_args,
        params=sum(p.numel() for p in model.parameters()),
        model_ema=model_ema,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
    )


def build(run: TrainingRun) -> None:
    """Seed, then build the run's data (:func:`build_data`) and training state (:func:`build_state`).

    Raises:
        UserError: Missing or unreadable data, an unknown model, or resumed weights that do not fit it.
    """
    seed_everything(run.cfg.seed)
    run.data = build_data(run.cfg, run.ctx, run.read_only_data)
    run.state = build_state(run.cfg, run.ctx, run.data.info, len(run.data.train_loader), run.checkpoint)


def warn_batchnorm(model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> str | None:
    """Warn (rank 0) that BatchNorm statistics are per process in a distributed run without SyncBatchNorm.

    Returns:
        The warning, or None when there is nothing to say.
    """
    if not ctx.distributed or cfg.sync_bn or not ctx.is_main:
        return None
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None
    if ctx.device.type == "cuda":
        fix = "add --sync-bn to normalise over the global batch"
    else:
        fix = "torch has no SyncBatchNorm on CPU; use a larger --batch-size, or a model without BatchNorm"
    message = (
        f"BatchNorm statistics are per process: each of the {ctx.world_size} processes normalises with its own "
        f"batch of {cfg.batch_size}, and the saved running statistics are rank 0's; {fix}"
    )
    _logger.warning(message)
    return message


# --------------------------------------------------------------------------------------------- restore_progress
def _training_state(optimizer: torch.optim.Optimizer, scaler: Any) -> dict[str, Any]:
    """Everything besides the weights that an exact resume needs (the schedule is a function of the config and the
    update count, so it is rebuilt, not stored)."""
    state: dict[str, Any] = {"optimizer": optimizer.state_dict(), "rng": capture_rng_state()}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def _restore_state(run: TrainingRun, checkpoint: Checkpoint) -> None:
    """Load the training state of ``checkpoint`` and its progress (epoch, updates, history, best, run id).

    The learning-rate schedule is the one of the resolved config (a larger ``--epochs`` stretches it) at the
    checkpoint's position; when the updates per epoch changed (world size, batch size, subset), the position is
    rescaled to the same epoch.

    Raises:
        CheckpointError: The training state does not fit the optimizer.
    """
    meta, state = CheckpointMeta.from_dict(checkpoint.meta, checkpoint.path, RESUME_KEYS), checkpoint.state
    try:
        run.state.optimizer.load_state_dict(state["optimizer"])
        if run.state.scaler is not None and "scaler" in state:
            run.state.scaler.load_state_dict(state["scaler"])
        if run.state.model_ema is not None and checkpoint.ema_state is not None:
            run.state.model_ema.module.load_state_dict(checkpoint.ema_state)
        restore_rng_state(state["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(
            f"{checkpoint.path} has an unusable training state ({type(e).__name__}: {e}); resume from another "
            "checkpoint or start a new run"
        ) from e
    num_updates, updates_per_epoch = meta.num_updates, len(run.data.train_loader)
    if meta.updates_per_epoch != updates_per_epoch:
        rescaled = meta.epoch * updates_per_epoch
        _logger.warning(
            "updates per epoch changed from %d to %d (another world size, batch size or subset): the schedule "
            "continues at epoch %d (update %d instead of %d)",
            meta.updates_per_epoch, updates_per_epoch, meta.epoch, rescaled, num_updates,
        )  # fmt: skip
        num_updates = rescaled
    if run.state.lr_scheduler is not None:
        run.state.lr_scheduler.step_update(num_updates=num_updates)
    run.progress = Progress(meta.run_id, meta.epoch, num_updates, meta.train_seconds, meta.history, meta.best)


def restore_progress(run: TrainingRun) -> None:
    """The training state and progress of the resumed checkpoint (released afterwards), or a fresh start.

    Raises:
        CheckpointError: The checkpoint's training state does not fit the optimizer.
    """
    run.progress.run_id = uuid.uuid4().hex
    checkpoint, run.checkpoint = run.checkpoint, None  # released: the weights and state are in the model now
    if checkpoint is None:
        return
    _restore_state(run, checkpoint)
    _logger.info("resumed %s at epoch %d/%d", checkpoint.path, run.progress.start_epoch, run.cfg.epochs)
    if run.fork:  # a new run: its own id, and its best starts at the fork point (the old best file stays there)
        run.progress.run_id = uuid.uuid4().hex
        row = run.progress.history[-1] if run.progress.history else {}
        top1 = row.get("ema_val_top1" if run.cfg.model_ema else "val_top1", -1.0)
        run.progress.best = {"epoch": run.progress.start_epoch, "top1": -1.0 if top1 is None else float(top1)}


def wrap_model(run: TrainingRun) -> None:
    """Compile the model (``--compile``) and wrap it for DDP (under ``torchrun``), after its state was restored."""
    if run.cfg.compile:
        run.state.model = torch.compile(run.state.model)
    if run.ctx.distributed:
        device = run.ctx.device
        run.state.model = nn.parallel.DistributedDataParallel(
            run.state.model, device_ids=[device] if device.type == "cuda" else None
        )


def open_run(run: TrainingRun) -> None:
    """Create and lock the run directory of a new run or a fork (rank 0 decides, every rank learns it), then write its
    first files.

    Raises:
        UserError: The run directory cannot be created or written.
    """
    cfg, ctx = run.cfg, run.ctx
    if run.run_dir is None:

        def create_and_lock() -> Path:
            run_dir = create_run_dir(cfg, run.data.info.name)
            run.lock = RunLock.acquire(run_dir)
            return run_dir

        run.run_dir = Path(_broadcast_outcome(create_and_lock, ctx))
        if run.fork:
            _logger.info("forked %s (epoch %d) into %s", run.resume_from, run.progress.start_epoch, run.run_dir)
    if ctx.is_main:
        _open_run_dir(run)


def _broadcast_outcome(fn: Callable[[], object], ctx: DistContext) -> str:
    """Run ``fn`` on rank 0 and give every rank its result as a string, or raise its :class:`ConfigError` everywhere."""
    text = ""
    if ctx.is_main:
        try:
            text = "ok:" + str(fn())
        except UserError as e:
            if not ctx.distributed:
                raise
            text = f"error:{e}"
    text = broadcast_text(text, ctx)
    if text.startswith("error:"):
        raise ConfigError(text[len("error:") :])
    return text[len("ok:") :]


def _check_disk_space(folder: Path, model: nn.Module, model_ema: Any) -> None:
    """Refuse to start when ``folder``'s disk cannot hold the checkpoints (last, best and one being written).

    The size of a checkpoint is estimated as the weights, the EMA weights and two optimizer moments per parameter.

    Raises:
        CheckpointError: Too little free space.
    """
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    estimate = weights * (2 if model_ema is not None else 1) + 2 * params
    existing = sum(p.stat().st_size for p in folder.glob("*.safetensors") if p.is_file())
    needed = 3 * estimate - existing
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CheckpointError(
            f"{folder} has {free / 2**20:.1f} MiB free, the checkpoints need about {needed / 2**20:.1f} MiB; free "
            "disk space or use another --out"
        )


def _open_run_dir(run: TrainingRun) -> None:
    """Rank 0: clean up, complete or start the checkpoints, write config.yaml and command.txt, open TensorBoard."""
    paths, cfg = run.paths, run.cfg
    check_run_files(paths.path)
    for folder in (paths.path, paths.checkpoints):
        for stale in clean_stale_tmp(folder):  # left by a process killed while writing
            _logger.info("removed %s, left by an interrupted write", stale)
    _check_disk_space(paths.checkpoints, unwrap_model(run.state.model), run.state.model_ema)
    if run.fork:
        run.commit(run.progress.start_epoch)  # the fork point: the new run is resumable and has a best file at once
    else:
        repair_best(paths.checkpoints)
    try:
        write_config(cfg, paths.config)
        append_command(paths.command, run.argv)
    except OSError as e:
        raise CheckpointError(f"cannot write in {paths.path}: {e.strerror or e}; make it writable") from e
    if run.progress.history:
        write_metrics_csv(run.progress.history, paths.metrics)
    try:
        from torch.utils.tensorboard import SummaryWriter

        purge_step = run.progress.start_epoch + 1 if run.progress.start_epoch else None
        run.writer = SummaryWriter(str(paths.tensorboard), purge_step=purge_step)
    except ImportError:
        _logger.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
    _logger.info(
        "run %s: %s (%.2fM params) on %s, %d train / %d val images, %d x %d process(es), device %s",
        paths.path, cfg.model, run.state.params / 1e6, run.data.info.name, len(run.data.datasets["train"]),
        len(run.data.datasets["val"]), cfg.batch_size, run.ctx.world_size, run.ctx.device,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------------- fit
def _criterion(cfg: TrainConfig) -> nn.Module:
    if cfg.mixup > 0 or cfg.cutmix > 0:
        return SoftTargetCrossEntropy()  # Mixup applies the label smoothing
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def _mixup(cfg: TrainConfig, num_classes: int) -> Mixup | None:
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing, num_classes=num_classes)


def _epoch_options(run: TrainingRun) -> EpochOptions:
    cfg, ctx = run.cfg, run.ctx
    return EpochOptions(
        criterion=_criterion(cfg),
        device=ctx.device,
        ctx=ctx,
        lr_scheduler=run.state.lr_scheduler,
        amp_dtype=run.state.amp_dtype,
        scaler=run.state.scaler,
        mixup_fn=_mixup(cfg, run.data.info.num_classes),
        model_ema=run.state.model_ema,
        clip_grad=cfg.clip_grad,
        channels_last=cfg.channels_last,
        progress=cfg.progress and ctx.is_main,
    )


def _validate(run: TrainingRun, row: dict[str, Any]) -> dict[str, Any]:
    """Add the validation metrics (and the EMA's) to ``row``; return those the run selects its best epoch on."""
    eval_kwargs = {
        "num_classes": run.data.info.num_classes,
        "ctx": run.ctx,
        "amp_dtype": run.state.amp_dtype,
        "channels_last": run.cfg.channels_last,
        "progress": run.cfg.progress and run.ctx.is_main,
    }
    device = run.ctx.device
    val_stats = evaluate(run.state.model, run.data.val_loader, device, desc="validate", **eval_kwargs)
    row.update(
        val_loss=val_stats["loss"], val_top1=val_stats["top1"], val_top5=val_stats["top5"],
        val_images_per_s=val_stats["images_per_s"],
    )  # fmt: skip
    if run.state.model_ema is None:
        return val_stats
    ema_stats = evaluate(run.state.model_ema.module, run.data.val_loader, device, desc="validate EMA", **eval_kwargs)
    row.update(ema_val_loss=ema_stats["loss"], ema_val_top1=ema_stats["top1"], ema_val_top5=ema_stats["top5"])
    return ema_stats


def _check_diverged(epoch: int, row: dict[str, Any], model: nn.Module, model_ema: Any) -> None:
    """Raise :class:`NonFiniteLossError` when the epoch left NaN/infinite weights or losses (before they are saved).

    The loss is checked before every step by :func:`train_one_epoch`; this catches the last update of the epoch
    and a validation that overflows.
    """
    bad = [f"weights ({', '.join(names[:3])})" for names in [nonfinite_names(model.state_dict())] if names]
    if model_ema is not None and nonfinite_names(model_ema.module.state_dict()):
        bad.append("EMA weights")
    bad += [key for key in ("train_loss", "val_loss", "ema_val_loss") if key in row and not math.isfinite(row[key])]
    if bad:
        raise NonFiniteLossError(
            f"the training diverged in epoch {epoch + 1}: NaN or infinity in the {', '.join(bad)}; nothing of this "
            "epoch was saved. Lower --lr, set --clip-grad (e.g. 1.0), or train without float16 (--amp none or bf16)"
        )


def _run_epoch(run: TrainingRun, epoch: int, options: EpochOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and validate one epoch; return its metrics row and the metrics the best epoch is chosen on."""
    cfg, ctx = run.cfg, run.ctx
    seed_everything(epoch_seed(cfg.seed, epoch, ctx.rank))
    set_epoch(run.data.train_loader, epoch, cfg.seed, ctx.rank)
    train_stats = train_one_epoch(
        run.state.model, run.data.train_loader, run.state.optimizer, options, epoch,
        num_updates=run.progress.num_updates, desc=f"epoch {epoch + 1}/{cfg.epochs}",
    )  # fmt: skip
    run.progress.num_updates = int(train_stats["num_updates"])
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "lr": train_stats["lr"],
        "train_loss": train_stats["loss"],
        "train_top1": train_stats["top1"],
        "train_images_per_s": train_stats["images_per_s"],
    }
    selected = _validate(run, row)
    _check_diverged(epoch, row, unwrap_model(run.state.model), run.state.model_ema)
    return row, selected


def _record_epoch(run: TrainingRun, row: dict[str, Any], remaining_seconds: float) -> None:
    """Rank 0: commit the checkpoints, rewrite metrics.csv, log to TensorBoard and print the epoch line."""
    run.commit(row["epoch"])
    write_metrics_csv(run.progress.history, run.paths.metrics)
    if run.writer is not None:
        for key, value in row.items():
            if key != "epoch":
                run.writer.add_scalar(_tensorboard_tag(key), value, row["epoch"])
        run.writer.flush()
    print(epoch_line(row, run.cfg.epochs, remaining_seconds), flush=True)


def fit(run: TrainingRun) -> None:
    """Run the epochs from the start epoch to ``cfg.epochs`` (or ``--stop-after`` of them), committing after each.

    Raises:
        UserError: The training diverged or a file cannot be written; the message names the last good checkpoint.
    """
    cfg = run.cfg
    options = _epoch_options(run)
    epoch_times: list[float] = []
    try:
        for epoch in range(run.progress.start_epoch, cfg.epochs):
            if run.stop_after is not None and epoch - run.progress.start_epoch >= run.stop_after:
                _logger.info(
                    "stopping after %d epoch(s) as asked; continue with --resume %s", run.stop_after, run.run_dir
                )
                break
            start = time.perf_counter()
            row, selected = _run_epoch(run, epoch, options)
            epoch_seconds = time.perf_counter() - start
            epoch_times.append(epoch_seconds)
            run.progress.train_seconds += epoch_seconds
            row.update(epoch_seconds=epoch_seconds, train_seconds=run.progress.train_seconds)
            run.progress.history.append(row)
            if selected["top1"] > run.progress.best["top1"]:
                run.progress.best = {"epoch": epoch + 1, "top1": selected["top1"]}
            if run.ctx.is_main:
                _record_epoch(run, row, sum(epoch_times) / len(epoch_times) * (cfg.epochs - epoch - 1))
    except UserError as e:
        last = run.paths.last
        if last.is_file():
            raise type(e)(
                f"{e}\nthe last good checkpoint is {last}; after the fix continue with: gsanet train --resume "
                f"{run.run_dir}"
            ) from e
        raise
    finally:
        if run.writer is not None:
            run.writer.close()


# ---------------------------------------------------------------------------------------------------- finish
def _summary(run: TrainingRun) -> RunSummary:
    cfg, history, best, paths = run.cfg, run.progress.history, run.progress.best, run.paths
    last = history[-1] if history else {}
    prefix = "ema_val_" if cfg.model_ema else "val_"
    return RunSummary(
        model=cfg.model,
        data=run.data.info.name,
        epochs=len(history),
        epochs_planned=cfg.epochs,
        finished=len(history) >= cfg.epochs,
        val_top1=last.get(prefix + "top1"),
        val_top5=last.get(prefix + "top5"),
        val_loss=last.get(prefix + "loss"),
        weights="ema" if cfg.model_ema else "model",
        best_val_top1=best["top1"] if history else None,
        best_epoch=best["epoch"] if history else None,
        params=run.state.params,
        train_seconds=run.progress.train_seconds,
        images_per_s=last.get("train_images_per_s"),
        eval_images_per_s=last.get("val_images_per_s"),
        world_size=run.ctx.world_size,
        device=str(run.ctx.device),
        amp=str(run.state.amp_dtype).removeprefix("torch.") if run.state.amp_dtype else "none",
        run_dir=str(paths.path),
        checkpoints={"last": str(paths.last), "best": str(paths.best)},
        metrics_csv=str(paths.metrics),
    )


def record_divergence(run: TrainingRun, error: NonFiniteLossError) -> None:
    """Rank 0: write ``summary.json`` for a run the divergence stopped (``finished`` false, ``diverged`` = the
    error), so that an experiment counts it as an outcome (a hyper-parameter that diverges) rather than a run to
    retry. Nothing of the diverged epoch is in it; the last good checkpoint stays."""
    if not run.ctx.is_main:
        return
    summary = _summary(run)
    summary.finished = False
    summary.diverged = str(error).split("\n")[0]
    try:
        write_summary(summary, run.paths.summary)
    except OSError as e:  # the divergence is the error to report; a summary that cannot be written is secondary
        _logger.warning("cannot write %s: %s", run.paths.summary, e)


def final_test(run: TrainingRun) -> dict[str, Any] | None:
    """``--final-test``: the final weights (the EMA's when the run selects on it) evaluated once on the dataset's test
    split, after the last epoch; None when not asked for or the schedule is not finished (``--stop-after``).

    Every process takes part (under DDP each evaluates its shard). The held-out split of ``--holdout`` is never part
    of the test split, so the test set is seen exactly once, here.

    Raises:
        DataError: The test split is missing or unreadable.
    """
    cfg = run.cfg
    if not cfg.final_test or len(run.progress.history) < cfg.epochs:
        return None
    datasets, _ = create_datasets(
        cfg.data, cfg.data_dir, splits=("val",), download=False, img_size=cfg.img_size, model_name=cfg.model,
        augment=False, seed=cfg.seed, class_names=run.data.info.class_names,
    )  # fmt: skip
    loader = create_loader(
        datasets["val"], cfg.batch_size, train=False, ctx=run.ctx, seed=cfg.seed, workers=cfg.workers
    )
    model = run.state.model_ema.module if run.state.model_ema is not None else run.state.model
    stats = evaluate(
        model, loader, run.ctx.device, num_classes=run.data.info.num_classes, ctx=run.ctx,
        amp_dtype=run.state.amp_dtype, channels_last=cfg.channels_last, progress=cfg.progress and run.ctx.is_main,
        desc="test",
    )  # fmt: skip
    if run.ctx.is_main:
        print(
            f"final test top-1 {stats['top1']:.2f}%  top-5 {stats['top5']:.2f}%  loss {stats['loss']:.4f}  "
            f"({int(stats['count'])} test images, evaluated once)",
            flush=True,
        )
    return stats


def finish(run: TrainingRun) -> RunSummary:
    """Rank 0 (after at least one epoch): draw the curves and write ``summary.json``; return the summary.

    With ``--final-test`` every process first evaluates the final weights on the test split (:func:`final_test`).

    Raises:
        CheckpointError: The plots or the summary cannot be written.
    """
    summary = _summary(run)
    test = final_test(run)
    if test is not None:
        summary.test_top1, summary.test_top5 = float(test["top1"]), float(test["top5"])
        summary.test_loss, summary.test_images = float(test["loss"]), int(test["count"])
    if run.ctx.is_main and run.progress.history:
        try:
            title = f"{run.cfg.model} on {Path(run.data.info.name).name}"
            paths = plot_curves(run.progress.history, run.run_dir, title=title)
        except OSError as e:
            raise CheckpointError(
                f"cannot write the plots in {run.run_dir}: {e.strerror or e}; make it writable"
            ) from e
        summary.plots = {name: str(path) for name, path in paths.items()}
        write_summary(summary, run.paths.summary)
    return summary


def epoch_line(row: dict[str, Any], epochs: int, remaining_seconds: float) -> str:
    """The line printed after an epoch: losses, accuracies, learning rate, throughput, time and ETA."""
    ema = f"  EMA top-1 {row['ema_val_top1']:.2f}%" if "ema_val_top1" in row else ""
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.2f}%"
        f"  val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}%{ema}"
        f"  lr {row['lr']:.2e}  {row['train_images_per_s']:.0f} img/s  {row['epoch_seconds']:.1f} s"
        f"  ETA {format_seconds(remaining_seconds)}"
    )


def _tensorboard_tag(key: str) -> str:
    """``train_loss`` -> ``train/loss``, ``ema_val_top1`` -> ``ema_val/top1``, ``lr`` -> ``lr``."""
    for prefix in ("ema_val", "train", "val"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return key


def format_seconds(seconds: float) -> str:
    """``1h02m`` from an hour on, else ``3m07s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
