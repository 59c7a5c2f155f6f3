"""Process-group set-up for ``torchrun`` (DDP), device choice, and the few collectives training needs.

A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) never touches ``torch.distributed``; every helper here is a
no-op for it. Under ``torchrun --nproc_per_node N`` the group is initialised from the environment (``env://``) with
``nccl`` on CUDA and ``gloo`` on CPU; only rank 0 writes files and prints.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from gsanet.errors import ConfigError

__all__ = [
    "DistContext",
    "ShardSampler",
    "all_reduce_sum",
    "barrier",
    "broadcast_text",
    "cleanup_distributed",
    "init_distributed",
    "resolve_device",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, local rank, world size and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` if CUDA is available, else ``cpu``; otherwise the named device.

    Raises:
        ConfigError: CUDA requested but not available, or an unknown device string.
    """
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device {name!r} is not a torch device ({e}); use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_name: str = "auto") -> DistContext:
    """Initialise the process group from ``torchrun``'s environment when ``WORLD_SIZE > 1``.

    Args:
        device_name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun ``cuda`` means ``cuda:LOCAL_RANK``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, init_method="env://", world_size=world_size, rank=rank)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    """Destroy the process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op for one process)."""
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over processes in place and return it (unchanged for one process)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_text(text: str, ctx: DistContext) -> str:
    """Rank 0's ``text`` on every process (sent as UTF-8 bytes in a tensor; nothing is pickled)."""
    if not ctx.distributed:
        return text
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
    length = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    if not ctx.is_main:
        data = torch.empty(int(length.item()), dtype=torch.uint8, device=device)
    dist.broadcast(data, src=0)
    return bytes(data.cpu().tolist()).decode()


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` without padding, so a sharded evaluation counts every sample once."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
