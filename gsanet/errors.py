"""The errors of every ``gsanet`` command: expected failures whose message names the problem and the fix.

:class:`UserError` is the one base: :func:`gsanet.commands.run` reports any of them as one line on stderr
(:func:`error_message`) with exit code 2, never as a traceback. The kinds say what went wrong.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "NonFiniteLossError", "UserError", "error_message"]


class UserError(Exception):
    """A mistake in a command's flags or inputs, or an expected failure; the message names the problem and the fix."""


class ConfigError(UserError):
    """A config file or flag is unknown, of the wrong type or out of range."""


class DataError(UserError):
    """A dataset is missing, empty, unreadable or does not match the model."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, belongs to another model, or would overwrite another run's file; or a
    folder cannot be written."""


class NonFiniteLossError(UserError):
    """The training loss, the weights or the validation loss became NaN or infinite; nothing non-finite was saved."""


def error_message(error: BaseException) -> str:
    """The error's own message, without the traceback a DataLoader worker process wraps around it."""
    message = str(error)
    marker = f"{type(error).__name__}: "
    if "Original Traceback" in message and marker in message:
        message = message.rsplit(marker, 1)[1].strip()
    return message
