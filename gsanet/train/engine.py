"""The training engine: model creation, :func:`train_one_epoch` and :func:`evaluate` as plain functions.

As in the torchvision references and ConvNeXt's ``engine.py``: the command line builds the model, optimizer, loaders
and schedule, and calls these once per epoch. Both work for one process and under DDP (metrics are summed over
processes); accuracies are percentages. A NaN/infinite training loss raises :class:`NonFiniteLossError` before any
optimizer step uses it, so the weights and the last checkpoint stay good.
"""

from __future__ import annotations

import difflib
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.utils import unwrap_model
from torch import nn
from tqdm import tqdm

from gsanet.errors import ConfigError, NonFiniteLossError
from gsanet.runtime import autocast

from .config import check_model_kwargs
from .data import available_memory, format_bytes
from .distributed import DistContext, all_reduce_sum

__all__ = [
    "check_step_memory",
    "estimate_step_bytes",
    "EpochOptions",
    "autocast",
    "create_model",
    "evaluate",
    "native_bf16",
    "resolve_amp",
    "seed_everything",
    "train_one_epoch",
]

_logger = logging.getLogger(__name__)

_AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (CUDA with bf16, or a CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu helpers: guard them
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``--amp`` value on ``device`` (None = full precision).

    ``auto`` is bf16 where the hardware has native bf16 and full precision elsewhere (emulated bf16 is slower than
    float32).

    Raises:
        ConfigError: fp16 on a CPU.
    """
    if amp == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            "--amp fp16 needs CUDA (float16 autocast on CPU is slow and unscaled); use --amp bf16 or none"
        )
    return _AMP_DTYPES[amp]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    img_size: int | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """``timm.create_model`` with the dataset's classes/channels; ``img_size`` only goes to models that take it.

    The gsa_* models are in timm's registry already: importing this module imported ``gsanet``.

    ``model_kwargs`` pass :func:`~gsanet.train.config.check_model_kwargs` first: nothing that makes timm read a file
    or pretrained weights gets through.

    Raises:
        ConfigError: Unknown model name, refused ``model_kwargs``, or arguments the model rejects.
    """
    check_model_kwargs(dict(model_kwargs or {}))
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f'unknown model {name!r}{hint}; list them with python -c "import gsanet, timm; '
            "print(timm.list_models('gsa*'))\""
        )
    kwargs = dict(model_kwargs or {})
    if drop_rate:
        kwargs["drop_rate"] = drop_rate
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        if img_size is not None and "img_size" not in kwargs:
            try:
                return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
            except TypeError as e:
                if "img_size" not in str(e):
                    raise
        return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name} rejected its arguments {sorted(kwargs)}: {e}; fix --model-kwargs") from e


def _batch_to(images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool) -> tuple:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


@dataclass
class EpochOptions:
    """How :func:`train_one_epoch` takes each step: the loss, the device, and the run's training options.

    Attributes:
        criterion: Loss of ``(logits, targets)``; targets are soft when ``mixup_fn`` is set.
        device: Device of the model.
        ctx: Distributed context; None = one process.
        lr_scheduler: timm scheduler stepped per update (``step_update``), or None.
        amp_dtype: Autocast dtype, or None for full precision.
        scaler: GradScaler for float16, or None.
        mixup_fn: timm ``Mixup``, or None.
        model_ema: timm ``ModelEmaV3``, or None.
        clip_grad: Max gradient norm, or None.
        channels_last: Feed channels-last inputs.
        progress: Show a tqdm bar (loss, accuracy, images/s, ETA).
    """

    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    ctx: DistContext | None = None
    lr_scheduler: Any = None
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    mixup_fn: Callable | None = None
    model_ema: Any = None
    clip_grad: float | None = None
    channels_last: bool = False
    progress: bool = False


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    options: EpochOptions,
    epoch: int,
    *,
    num_updates: int = 0,
    desc: str = "",
) -> dict[str, float]:
    """Train for one pass over ``loader``.

    Args:
        model: The model (possibly DDP-wrapped or compiled).
        loader: Yields ``(images, integer targets)``.
        optimizer: The optimizer.
        options: The loss, device and training options.
        epoch: 0-based epoch (for messages).
        num_updates: Optimizer updates done before this epoch.
        desc: Label of the progress bar.

    Returns:
        ``loss`` (mean over samples), ``top1`` (%, against the un-mixed labels), ``images_per_s`` (all processes),
        ``seconds``, ``lr`` (at the end), ``num_updates``.

    Raises:
        NonFiniteLossError: The loss (averaged over processes) is NaN or infinite; no step was taken with it.
    """
    o = options
    device, scaler, clip_grad, progress = o.device, o.scaler, o.clip_grad, o.progress
    ctx = o.ctx or DistContext(device=device)
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    start = time.perf_counter()
    bar = tqdm(loader, total=len(loader), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step, (images, targets) in enumerate(bar):
        images, targets = _batch_to(images, targets, device, o.channels_last)
        labels = targets
        if o.mixup_fn is not None:
            images, targets = o.mixup_fn(images, targets)
        with autocast(device, o.amp_dtype):
            output = model(images)
        loss = o.criterion(output.float(), targets)  # the loss in float32, whatever the autocast dtype
        loss_value = loss.detach().float().clone()
        if ctx.distributed:
            loss_value = all_reduce_sum(loss_value, ctx) / ctx.world_size
        if not math.isfinite(loss_value.item()):
            raise NonFiniteLossError(
                f"the training loss is {loss_value.item()} at epoch {epoch + 1}, step {step + 1}; no update was made "
                "with it. Lower --lr, set --clip-grad (e.g. 1.0), or train without float16 (--amp none or bf16)"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        num_updates += 1
        if o.model_ema is not None:
            o.model_ema.update(unwrap_model(model), step=num_updates)
        if o.lr_scheduler is not None:
            o.lr_scheduler.step_update(num_updates=num_updates)

        n = labels.shape[0]
        correct = (output.detach().argmax(dim=-1) == labels).sum()
        totals += torch.stack([loss.detach().double() * n, correct.double(), torch.tensor(n, device=device).double()])
        if progress:
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{loss_value.item():.4f}",
                acc=f"{100.0 * totals[1].item() / totals[2].item():.1f}%",
                img_s=f"{(step + 1) * n * ctx.world_size / elapsed:.0f}",
                refresh=False,
            )
    bar.close()
    seconds = time.perf_counter() - start
    all_reduce_sum(totals, ctx)
    loss_sum, correct, count = totals.tolist()
    return {
        "loss": loss_sum / max(count, 1),
        "top1": 100.0 * correct / max(count, 1),
        "images_per_s": count / seconds,
        "seconds": seconds,
        "lr": optimizer.param_groups[0]["lr"],
        "num_updates": num_updates,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    num_classes: int,
    ctx: DistContext | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, Any]:
    """Cross-entropy loss, top-1/top-5 accuracy (%), throughput and confusion matrix over ``loader``.

    Args:
        model: The model.
        loader: Yields ``(images, integer targets)``; under DDP each process holds a disjoint shard.
        device: Device of the model.
        num_classes: Number of classes (size of the confusion matrix).
        ctx: Distributed context; None = one process.
        amp_dtype: Autocast dtype, or None.
        channels_last: Feed channels-last inputs.
        progress: Show a tqdm bar.
        desc: Label of the bar.

    Returns:
        ``loss``, ``top1``, ``top5``, ``images_per_s``, ``seconds``, ``count`` and ``confusion`` (an int64
        ``num_classes x num_classes`` tensor, rows = true class, columns = prediction).
    """
    ctx = ctx or DistContext(device=device)
    model.eval()
    k = min(5, num_classes)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-k, count
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    start = time.perf_counter()
    bar = tqdm(loader, total=len(loader), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for images, targets in bar:
        images, targets = _batch_to(images, targets, device, channels_last)
        with autocast(device, amp_dtype):
            output = model(images)
        output = output.float()
        topk = output.topk(k, dim=-1).indices  # B x k
        hits = topk == targets[:, None]
        loss = F.cross_entropy(output, targets, reduction="sum")
        n = torch.tensor(targets.shape[0], device=device)
        totals += torch.stack([loss.double(), hits[:, 0].sum().double(), hits.any(dim=-1).sum().double(), n.double()])
        confusion += torch.bincount(targets * num_classes + topk[:, 0], minlength=num_classes * num_classes)
    bar.close()
    seconds = time.perf_counter() - start
    all_reduce_sum(totals, ctx)
    all_reduce_sum(confusion, ctx)
    loss_sum, top1, top5, count = totals.tolist()
    count_ = max(count, 1)
    return {
        "loss": loss_sum / count_,
        "top1": 100.0 * top1 / count_,
        "top5": 100.0 * top5 / count_,
        "images_per_s": count / seconds,
        "seconds": seconds,
        "count": int(count),
        "confusion": confusion.view(num_classes, num_classes).cpu(),
    }


# --------------------------------------------------------------------------------------------- memory bounds
def estimate_step_bytes(model: nn.Module, in_chans: int, img_size: int, batch_size: int, probe: int = 64) -> int:
    """The bytes the autograd graph of one training step keeps (the activations saved for the backward pass), in
    float32, for ``batch_size`` images of ``img_size`` x ``img_size``.

    Measured on a copy of the model (its weights, statistics and the random state are left as they were) with two
    images at ``min(probe, img_size)`` pixels, and scaled by the pixel count and the batch size: the activations of
    convolutions and of GSA modules grow with the pixels (measured: 3.9x from 64 to 128, 4.0x from 128 to 256 for
    ``gsa_resnet26_tiny``).

    Raises:
        RuntimeError: The model cannot run at the probe size (the caller skips the check).
    """
    import copy

    probe = min(probe, img_size)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()  # a tensor saved twice is counted once
        return t

    with torch.random.fork_rng(devices=[]):
        clone = copy.deepcopy(model).train()
        x = torch.randn(2, in_chans, probe, probe)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            clone(x)
    return int(sum(storages.values()) / 2 * (img_size / probe) ** 2 * batch_size)


def check_step_memory(model: nn.Module, in_chans: int, img_size: int, batch_size: int, device: torch.device) -> None:
    """Refuse a training step whose activations (:func:`estimate_step_bytes`) exceed the memory available on
    ``device`` (the machine's for the CPU, the GPU's free memory for CUDA), before the first step is tried.

    Raises:
        ConfigError: They do not fit; the message says which ``--batch-size`` fits, or that ``--img-size`` must shrink.
    """
    if device.type == "cuda":
        memory = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu":
        memory = available_memory()
    else:
        return
    if memory is None:
        return
    try:
        needed = estimate_step_bytes(model, in_chans, img_size, batch_size)
    except RuntimeError as e:  # a model that cannot run at the probe size: its own forward pass will say why
        _logger.debug("no activation-memory estimate: %s", e)
        return
    if needed <= memory:
        return
    fit = memory * batch_size // needed
    fix = f"use --batch-size {fit} or less, or a smaller --img-size" if fit >= 1 else "use a smaller --img-size"
    raise ConfigError(
        f"a training step at {img_size}x{img_size} with --batch-size {batch_size} needs about {format_bytes(needed)} "
        f"for its activations (estimated), more than the {format_bytes(memory)} available on {device}; {fix}"
    )
