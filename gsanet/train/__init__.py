"""Training and evaluation: ``gsanet train`` and ``gsanet eval``.

Modules: ``config`` (the typed configs of the two commands), ``data`` (datasets and
loaders), ``engine`` (:func:`train_one_epoch`, :func:`evaluate`), ``checkpoint`` (safetensors + JSON, atomic),
``rundir`` (the run directory and checkpoint metadata contract, :func:`load_model`), ``training`` (the steps of a
training run), ``distributed`` (torchrun), ``plots`` (curves, confusion matrices), ``train_cli`` and ``eval_cli`` (the
two commands).
"""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import EvalConfig, TrainConfig
from .data import DataInfo, create_datasets, create_loader, read_idx
from .engine import EpochOptions, create_model, evaluate, train_one_epoch
from .metadata import CheckpointMeta, RunSummary
from .rundir import LoadedModel, RunDir, load_model, read_summary

__all__ = [
    "Checkpoint",
    "CheckpointMeta",
    "DataInfo",
    "EpochOptions",
    "EvalConfig",
    "LoadedModel",
    "RunDir",
    "RunSummary",
    "TrainConfig",
    "create_datasets",
    "create_loader",
    "create_model",
    "evaluate",
    "load_checkpoint",
    "load_model",
    "read_idx",
    "read_summary",
    "save_checkpoint",
    "train_one_epoch",
]
