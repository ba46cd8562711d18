"""One writer per run folder: an OS lock on ``.lock`` inside it, held while a run trains.

Two trainings with the same settings and output name (a second ComfyUI on the same output folder,
a headless run beside the canvas) would write the same epoch files and resume state. The lock is
the operating system's (``flock`` on POSIX, ``msvcrt.locking`` on Windows), so it is released when
its process dies, even by kill -9: a stale lock never blocks the next run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None

LOCK_FILE = ".lock"


class FolderBusy(Exception):
    """Another process (or another run in this one) holds the folder's lock."""


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:  # pragma: no cover - Windows
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif msvcrt is not None:  # pragma: no cover - Windows
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block; raise :class:`FolderBusy` at once if it is held.

    The lock file stays in the folder (removing it would race with the next locker); it is empty.
    """
    path = Path(folder) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _try_lock(fd):
            raise FolderBusy(str(folder))
        try:
            yield path
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def is_locked(folder: str | os.PathLike[str]) -> bool:
    """Whether some run holds ``folder``'s lock now (for sweeps that must leave busy folders alone)."""
    try:
        with folder_lock(folder):
            return False
    except FolderBusy:
        return True
    except OSError:
        return True  # cannot tell (read-only, gone): treat as busy and leave it alone
