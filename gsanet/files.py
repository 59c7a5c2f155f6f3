"""Writing into a folder the user chose: the one write probe every command and the training use."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import CheckpointError

__all__ = ["ensure_writable", "write_error"]


def write_error(path: Path, error: OSError) -> CheckpointError:
    """The one-line error of a failed write of ``path``, with the fix its cause calls for."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        fix = "free disk space (or use another --out)"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make the directory writable (or use another --out)"
    else:
        fix = "check the disk and the directory"
    return CheckpointError(f"cannot write {path}: {reason}; {fix}")


def ensure_writable(folder: str | Path) -> None:
    """Create ``folder`` if needed and check a file can be written in it (a probe file, then removed).

    Raises:
        CheckpointError: The folder cannot be created or written (read-only, no permission, not a directory, full).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            Path(probe).unlink(missing_ok=True)
    except OSError as e:
        raise write_error(folder, e) from e
