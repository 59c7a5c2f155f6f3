"""The errors of ``gsanet train`` and ``gsanet eval``: expected failures whose message names the problem and the fix.

The commands report a :class:`TrainError` as one line on stderr (:func:`error_message`) and exit with code 2.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "NonFiniteLossError", "TrainError", "error_message"]


class TrainError(Exception):
    """An expected failure of ``gsanet train``/``gsanet eval``; the message names the problem and the fix."""


class ConfigError(TrainError):
    """A config file or flag is unknown, of the wrong type or out of range."""


class DataError(TrainError):
    """A dataset is missing, empty, unreadable or does not match the model."""


class CheckpointError(TrainError):
    """A checkpoint is missing, corrupt, belongs to another model, or would overwrite another run's file."""


class NonFiniteLossError(TrainError):
    """The training loss, the weights or the validation loss became NaN or infinite; nothing non-finite was saved."""


def error_message(error: BaseException) -> str:
    """The error's own message, without the traceback a DataLoader worker process wraps around it."""
    message = str(error)
    marker = f"{type(error).__name__}: "
    if "Original Traceback" in message and marker in message:
        message = message.rsplit(marker, 1)[1].strip()
    return message
