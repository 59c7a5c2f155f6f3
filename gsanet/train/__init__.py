"""Training and evaluation: ``gsanet train`` and ``gsanet eval``.

Modules: ``config`` (typed configs, yaml/flag loading, errors), ``data`` (datasets and loaders), ``engine``
(:func:`train_one_epoch`, :func:`evaluate`), ``checkpoint`` (safetensors + JSON, atomic), ``distributed`` (torchrun),
``plots`` (curves, confusion matrices), ``cli`` and ``evaluate_cli`` (the two commands).
"""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import (
    CheckpointError,
    ConfigError,
    DataError,
    EvalConfig,
    NonFiniteLossError,
    TrainConfig,
    TrainError,
)
from .data import DataInfo, create_datasets, create_loader, read_idx
from .engine import create_model, evaluate, train_one_epoch

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataInfo",
    "EvalConfig",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainError",
    "create_datasets",
    "create_loader",
    "create_model",
    "evaluate",
    "load_checkpoint",
    "read_idx",
    "save_checkpoint",
    "train_one_epoch",
]
