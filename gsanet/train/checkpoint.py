"""Checkpoints that lose nothing and never unpickle: one safetensors file per checkpoint.

Layout of ``<run>/checkpoints/{last,best}.safetensors``, written together by :func:`commit_checkpoints`:

* tensors ``model.<name>``: the model's state dict (what ``gsanet eval`` loads);
* tensors ``ema.<name>``: the EMA weights, when the run keeps an EMA;
* tensors ``state.<n>``: every tensor of the training state (optimizer moments and steps, RNG states, ...);
* the safetensors header metadata ``gsanet``: a JSON document with the run id, model name and arguments, dataset
  description, completed epochs, resolved config, metric history, and the training state with each tensor replaced
  by a reference ``{"__tensor__": "state.<n>"}`` (tuples and non-string dict keys are encoded explicitly, so the
  optimizer state dict comes back exactly).

Loading reads safetensors and JSON only: no pickle, no ``torch.load``. The metadata is untrusted input: one reader,
:func:`read_metadata`, checks the keys of the file format here and hands the rest to the type that owns them,
:meth:`gsanet.train.metadata.CheckpointMeta.check` (every known key's type and bounds; unknown keys are dropped;
``model_kwargs`` checked so that no ``checkpoint_path`` or ``pretrained_cfg`` reaches timm). This module keeps the file
format and the training-state codec only.

A file is written to a temporary name in the same directory, flushed, fsynced, and moved over the old one with
``os.replace``: a process killed at any moment leaves either the previous or the new checkpoint, never a torn one.
A checkpoint written by another run (another run id) is never overwritten.

The pair ``last``/``best`` is kept consistent by one rule: ``last`` is the commit point and its metadata ``best``
names the best epoch; when that is the epoch of ``last`` itself, ``best.safetensors`` must be a copy of it. The copy
is made right after ``last`` is written; a process stopped in between (SIGKILL, Ctrl-C, a full disk) leaves a
``best`` that :func:`repair_best` completes from ``last`` on resume, and that :func:`best_checkpoint` (``gsanet
eval``/``visualize`` of a run directory) does not use meanwhile: it uses ``last``, which is then the best epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gsanet.errors import CheckpointError
from gsanet.files import write_error

from .metadata import CheckpointMeta

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "atomic_path",
    "best_checkpoint",
    "capture_rng_state",
    "check_finite",
    "check_state_dict",
    "clean_stale_tmp",
    "commit_checkpoints",
    "copy_checkpoint",
    "json_safe",
    "load_checkpoint",
    "nonfinite_names",
    "pack_state",
    "read_checkpoint_meta",
    "read_metadata",
    "repair_best",
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
            if obj[_TENSOR] not in tensors:
                raise CheckpointError(f"the training state refers to a tensor {obj[_TENSOR]!r} the file does not hold")
            return tensors[obj[_TENSOR]]
        if set(obj) == {_TUPLE}:
            return tuple(unpack_state(v, tensors) for v in obj[_TUPLE])
        if set(obj) == {_ITEMS}:
            return {unpack_state(k, tensors): unpack_state(v, tensors) for k, v in obj[_ITEMS]}
        return {k: unpack_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_state(v, tensors) for v in obj]
    return obj


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, so that ``json.dumps(allow_nan=False)`` succeeds."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
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
        yield Path(tmp)
        # the permissions of a plainly created file, not mkstemp's 0600; set after the block, because a writer may
        # replace the temporary file by one of its own (safetensors' save_file creates a 0600 file)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def clean_stale_tmp(folder: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` when its process was killed; return them."""
    removed = []
    for stale in Path(folder).glob(".*.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def _os_error(error: SafetensorError) -> OSError:
    """The OSError a :class:`SafetensorError` of safetensors' writer wraps (its message names the OS error code)."""
    text = str(error)
    match = re.search(r"code: (\d+)", text)
    code = int(match.group(1)) if match else None
    return OSError(code, os.strerror(code)) if code is not None else OSError(None, text)


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


def _codec_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the keys of the file format itself (the rest is :class:`CheckpointMeta`'s to check)."""
    if "has_ema" in meta and not isinstance(meta["has_ema"], bool):
        return "has_ema must be true or false"
    if "state" in meta and not isinstance(meta["state"], dict):
        return "state must be a mapping"
    return None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The gsanet metadata of a checkpoint (reads the header only), checked against the schema.

    Only the known keys are returned; each one present has been checked for type and bounds. Which keys a caller
    needs, it asks :func:`require_meta` for.

    Raises:
        CheckpointError: The file is missing, not safetensors, not written by gsanet, or its metadata is malformed.
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
    try:
        meta = json.loads(header[_META_KEY])
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} has malformed gsanet metadata (not JSON: {e}); use another checkpoint") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has malformed gsanet metadata (not a JSON object); use another checkpoint")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {meta.get('format')!r}, this gsanet reads {CHECKPOINT_FORMAT!r}; "
            "use the gsanet version that wrote it"
        )
    problem = _codec_problem(meta)
    if problem is not None:
        raise CheckpointError(f"{path} has malformed metadata: {problem}; use another checkpoint")
    codec = {key: meta[key] for key in ("format", "has_ema", "state") if key in meta}
    return {**codec, **CheckpointMeta.check(meta, path)}


def read_checkpoint_meta(path: str | Path, require: Sequence[str] = ()) -> CheckpointMeta:
    """The typed metadata of the checkpoint file ``path`` (its header only).

    Raises:
        CheckpointError: Missing, unreadable or malformed, or a key of ``require`` is missing.
    """
    return CheckpointMeta.from_dict(read_metadata(path), path, require)


def nonfinite_names(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``tensors`` (a state dict) that hold NaN or infinity."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite(tensors: Mapping[str, torch.Tensor], path: str | Path, what: str = "weights") -> None:
    """Raise :class:`CheckpointError` if a floating-point tensor of ``tensors`` holds NaN or infinity."""
    bad = nonfinite_names(tensors)
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{path} holds non-finite {what} (NaN or infinity in {', '.join(bad[:3])}{more}): the training diverged "
            "before it was saved; use an earlier checkpoint"
        )


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
            "choose another --out or --name, or move the file away"
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
        CheckpointError: ``path`` holds a checkpoint of another run, or cannot be written (disk full, read-only).
    """
    path = Path(path)
    _guard_overwrite(path, meta["run_id"])
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model_state.items()}
    if ema_state is not None:
        tensors.update({f"ema.{k}": v for k, v in ema_state.items()})
    document = dict(meta, format=CHECKPOINT_FORMAT, has_ema=ema_state is not None)
    document["state"] = pack_state(dict(state or {}), tensors)
    text = json.dumps(json_safe(document), allow_nan=False)  # standard JSON: no bare NaN
    try:
        with atomic_path(path) as tmp:
            save_file(_storable(tensors), str(tmp), metadata={"format": "pt", _META_KEY: text})
    except OSError as e:
        raise write_error(path, e) from e
    except SafetensorError as e:  # safetensors reports its own I/O errors (a full disk) as SafetensorError
        raise write_error(path, _os_error(e)) from e
    return path


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint atomically (e.g. ``last`` to ``best``), refusing to overwrite another run's file."""
    src, dst = Path(src), Path(dst)
    _guard_overwrite(dst, read_metadata(src)["run_id"])
    try:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    except OSError as e:
        raise write_error(dst, e) from e
    return dst


def commit_checkpoints(
    folder: str | Path,
    meta: Mapping[str, Any],
    model_state: Mapping[str, torch.Tensor],
    *,
    ema_state: Mapping[str, torch.Tensor] | None = None,
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``folder/last.safetensors`` and, when ``meta["best"]["epoch"] == meta["epoch"]``, its copy ``best``.

    ``last`` is written first: it is the commit point. If the process stops before the copy, ``last`` records a
    best epoch that is its own, which :func:`repair_best` and :func:`best_checkpoint` recognise.

    Raises:
        CheckpointError: A file belongs to another run, or cannot be written (disk full, read-only).
    """
    folder = Path(folder)
    last = save_checkpoint(folder / "last.safetensors", meta, model_state, ema_state=ema_state, state=state)
    if meta["best"]["epoch"] == meta["epoch"]:
        copy_checkpoint(last, folder / "best.safetensors")
    return last


def _best_is_stale(last_meta: Mapping[str, Any], best: Path) -> bool:
    """Whether ``best`` misses the copy of ``last`` that ``last``'s metadata promises."""
    if last_meta.get("best", {}).get("epoch") != last_meta.get("epoch"):
        return False
    try:
        best_meta = read_metadata(best)
    except CheckpointError:
        return True
    return best_meta.get("epoch") != last_meta.get("epoch") or best_meta.get("run_id") != last_meta.get("run_id")


def repair_best(folder: str | Path) -> bool:
    """Complete a commit that stopped between ``last`` and ``best`` (copy ``last`` to ``best``); True if it did.

    Raises:
        CheckpointError: ``best`` cannot be written.
    """
    folder = Path(folder)
    last, best = folder / "last.safetensors", folder / "best.safetensors"
    if not last.is_file():
        return False
    meta = read_metadata(last)
    if not _best_is_stale(meta, best):
        return False
    copy_checkpoint(last, best)  # refuses to replace a file of another run
    _logger.warning("completed the interrupted checkpoint commit: %s is now epoch %s", best, meta.get("epoch"))
    return True


def best_checkpoint(run_dir: str | Path) -> Path:
    """The best checkpoint of a run directory: ``checkpoints/best.safetensors``, or ``last`` while ``best`` misses
    the copy an interrupted commit did not make (then ``last`` is the best epoch).

    Raises:
        CheckpointError: The run has neither.
    """
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    last, best = folder / "last.safetensors", folder / "best.safetensors"
    if last.is_file():
        try:
            stale = _best_is_stale(read_metadata(last), best)
        except CheckpointError:
            stale = False
        if stale:
            _logger.warning("%s misses the last commit (the run was interrupted): using %s, the best epoch", best, last)
            return last
    if best.is_file():
        return best
    raise CheckpointError(f"{run_dir} has no checkpoints/best.safetensors; give the checkpoint file itself")


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
