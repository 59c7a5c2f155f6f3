"""Checkpoints that lose nothing and never unpickle: one safetensors file per checkpoint.

Layout of ``<run>/checkpoints/{last,best}.safetensors``:

* tensors ``model.<name>``: the model's state dict (what ``gsanet eval`` loads);
* tensors ``ema.<name>``: the EMA weights, when the run keeps an EMA;
* tensors ``state.<n>``: every tensor of the training state (optimizer moments and steps, RNG states, ...);
* the safetensors header metadata ``gsanet``: a JSON document with the run id, model name and arguments, dataset
  description, completed epochs, resolved config, metric history, and the training state with each tensor replaced
  by a reference ``{"__tensor__": "state.<n>"}`` (tuples and non-string dict keys are encoded explicitly, so the
  optimizer state dict comes back exactly).

Loading reads safetensors and JSON only: no pickle, no ``torch.load``. A file is written to a temporary name in the
same directory, flushed, fsynced, and moved over the old one with ``os.replace``: a process killed at any moment
leaves either the previous or the new checkpoint, never a torn one. A checkpoint written by another run (another run
id) is never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "capture_rng_state",
    "check_state_dict",
    "atomic_path",
    "copy_checkpoint",
    "load_checkpoint",
    "pack_state",
    "read_metadata",
    "restore_rng_state",
    "save_checkpoint",
    "unpack_state",
]

_logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "gsanet-checkpoint/1"
_META_KEY = "gsanet"
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


@dataclass
class Checkpoint:
    """A loaded checkpoint: its metadata, model (and EMA) weights, and unpacked training state."""

    path: Path
    meta: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None = None
    state: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- nested state <-> JSON
def pack_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "state.") -> Any:
    """Turn nested dicts/lists/tuples/tensors/scalars into JSON data; tensors go to ``tensors`` by reference.

    Raises:
        TypeError: An object that is neither a tensor, a container nor a JSON scalar.
    """
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj
        return {_TENSOR: key}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: pack_state(v, tensors, prefix) for k, v in obj.items()}
        return {_ITEMS: [[pack_state(k, tensors, prefix), pack_state(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [pack_state(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [pack_state(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint: convert it to tensors or JSON values")


def unpack_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack_state`."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_TUPLE}:
            return tuple(unpack_state(v, tensors) for v in obj[_TUPLE])
        if set(obj) == {_ITEMS}:
            return {unpack_state(k, tensors): unpack_state(v, tensors) for k, v in obj[_ITEMS]}
        return {k: unpack_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_state(v, tensors) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------------ RNG state
def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's, torch's CPU and (if initialised) CUDA random generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)},
        "torch": torch.get_rng_state(),
    }
    state["numpy"].update(has_gauss=int(has_gauss), cached_gaussian=float(cached))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only when the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state((np_state["kind"], keys, np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------------------------------ file I/O
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform/filesystem
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; once the block has written it, it is fsynced and moved over ``path``.

    A process killed at any moment leaves either the old file or the new one; on an error the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # the permissions of a plainly created file, not mkstemp's 0600
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _storable(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors that share no memory (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        if ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The gsanet metadata of a checkpoint (reads the header only).

    Raises:
        CheckpointError: The file is missing, not safetensors, or not written by gsanet.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give a .safetensors file written by gsanet train")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); use another checkpoint") from e
    if _META_KEY not in header:
        raise CheckpointError(f"{path} has no gsanet metadata (not written by gsanet train); use one that was")
    meta = json.loads(header[_META_KEY])
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {meta.get('format')!r}, this gsanet reads {CHECKPOINT_FORMAT!r}; "
            "use the gsanet version that wrote it"
        )
    return meta


def _guard_overwrite(path: Path, run_id: str) -> None:
    if not path.exists():
        return
    try:
        other = read_metadata(path).get("run_id")
    except CheckpointError:
        other = None
    if other != run_id:
        raise CheckpointError(
            f"refusing to overwrite {path}: it belongs to another run ({other or 'not a gsanet checkpoint'}); "
            "choose another --output or --name, or move the file away"
        )


def save_checkpoint(
    path: str | Path,
    meta: Mapping[str, Any],
    model_state: Mapping[str, torch.Tensor],
    *,
    ema_state: Mapping[str, torch.Tensor] | None = None,
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file in the same directory, fsync, ``os.replace``).

    Args:
        path: Target ``.safetensors`` file.
        meta: JSON-serialisable metadata; must contain ``run_id``.
        model_state: The model's state dict.
        ema_state: The EMA model's state dict, if any.
        state: Training state (optimizer, scheduler, scaler, RNG, ...): nested containers of tensors and scalars.

    Raises:
        CheckpointError: ``path`` holds a checkpoint of another run.
    """
    path = Path(path)
    _guard_overwrite(path, meta["run_id"])
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model_state.items()}
    if ema_state is not None:
        tensors.update({f"ema.{k}": v for k, v in ema_state.items()})
    document = dict(meta, format=CHECKPOINT_FORMAT, has_ema=ema_state is not None)
    document["state"] = pack_state(dict(state or {}), tensors)
    with atomic_path(path) as tmp:
        save_file(_storable(tensors), str(tmp), metadata={"format": "pt", _META_KEY: json.dumps(document)})
    return path


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint atomically (e.g. ``last`` to ``best``), refusing to overwrite another run's file."""
    src, dst = Path(src), Path(dst)
    _guard_overwrite(dst, read_metadata(src)["run_id"])
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def load_checkpoint(path: str | Path, *, with_state: bool = True, map_location: str = "cpu") -> Checkpoint:
    """Load a checkpoint with safetensors and JSON only.

    Args:
        path: The ``.safetensors`` file.
        with_state: Also load the EMA weights and the training state (not needed for evaluation of raw weights).
        map_location: Device of the returned tensors.

    Raises:
        CheckpointError: Missing, unreadable, or not a gsanet checkpoint.
    """
    path = Path(path)
    meta = read_metadata(path)
    model_state, ema_state, others = {}, {}, {}
    try:
        with safe_open(str(path), framework="pt", device=map_location) as f:
            for key in f.keys():
                if key.startswith("model."):
                    model_state[key[len("model.") :]] = f.get_tensor(key)
                elif with_state and key.startswith("ema."):
                    ema_state[key[len("ema.") :]] = f.get_tensor(key)
                elif with_state:
                    others[key] = f.get_tensor(key)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); use another checkpoint (e.g. best.safetensors)") from e
    state = unpack_state(meta.pop("state", {}), others) if with_state else {}
    has_ema = with_state and meta.get("has_ema", False)
    return Checkpoint(path, meta, model_state, ema_state if has_ema else None, state)


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    *,
    model_name: str,
    checkpoint_model: str | None,
    path: str | Path,
) -> None:
    """Raise :class:`CheckpointError` unless ``found`` fits a model whose state dict is ``expected``.

    Args:
        expected: State dict of the model about to receive the weights.
        found: State dict stored in the checkpoint.
        model_name: Name of the model about to receive the weights.
        checkpoint_model: Model name stored in the checkpoint.
        path: The checkpoint (for the message).
    """
    if checkpoint_model is not None and checkpoint_model != model_name:
        raise CheckpointError(
            f"{path} holds a {checkpoint_model} model, not {model_name}; pass --model {checkpoint_model} or use a "
            f"checkpoint of {model_name}"
        )
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(
            f"{path} does not fit {model_name} as configured ({'; '.join(parts)}); use the model arguments "
            "(num_classes, in_chans, img_size, model_kwargs) the checkpoint was trained with"
        )
