"""Durable file writes: temporary file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# Called between the steps of every atomic write ("half written", "written", "fsynced", "renamed"):
# the crash test (tests/crash_child.py) kills the process there, so that it tests this very code.
step_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if step_hook is not None:
        step_hook(name)


def atomic_write(path: str | os.PathLike, data) -> int:
    """Write bytes-like `data` to `path` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    view = memoryview(data).cast("B")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(view[: len(view) // 2])  # in two halves: a kill between them leaves a partial file
            _step("half written")
            f.write(view[len(view) // 2 :])
            f.flush()
            _step("written")
            os.fsync(f.fileno())
            _step("fsynced")
        os.replace(tmp, path)
        _step("renamed")
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return len(view)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
