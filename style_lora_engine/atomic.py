"""Crash-safe file writes and path joins that cannot escape their folder.

Captions and LoRA files are written next to the user's data; a half-written file (power cut,
ComfyUI killed mid-save) must never replace a good one, and a caption name taken from a widget
must never write outside the dataset folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import StyleLoRAError

# Temp files being written by this process now (a background thread writes resume states), so a
# sweep for stale ones never deletes a write in progress.
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; when the block ends cleanly it is fsynced
    and renamed over ``path``, so readers see either the old file or the complete new one.

    The one atomic writer of the pack (caption files, resume state, LoRA files). The temporary file
    lives in the same directory because ``os.replace`` is only atomic within one filesystem; its
    name (``.<name>.<random>.tmp``) is hidden and never matches an epoch file. It is removed again if
    anything fails, Ctrl-C included.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    mode = _final_mode(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    with _ACTIVE_LOCK:
        _ACTIVE.add(os.path.abspath(tmp_name))
    try:
        yield Path(tmp_name)
        with open(tmp_name, "rb+") as handle:
            # fsync before the rename: otherwise a crash can leave a renamed but empty file.
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)  # mkstemp makes 0600 files; keep the usual (or the old) permissions
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(os.path.abspath(tmp_name))
    _fsync_directory(directory)


def remove_stale_temp_files(folder: str | os.PathLike[str], *, target_name: str | None = None,
                            min_age_seconds: float = 0.0) -> list[Path]:
    """Delete the temp files :func:`atomic_path` leaves when its process is killed mid-write (no
    ``finally`` runs then); writes in progress in this process are left alone.

    In a run folder whose lock is held (``folder_lock``) every other temp file is stale. In a shared
    folder (``loras``) pass ``target_name`` (only that file's temps) and ``min_age_seconds``: another
    process writing the same file now would have touched its temp within that time.
    """
    removed = []
    pattern = f".{target_name}.*.tmp" if target_name else ".*.tmp"
    now = time.time()
    for tmp in Path(folder).glob(pattern):
        with _ACTIVE_LOCK:
            active = os.path.abspath(tmp) in _ACTIVE
        if active or not tmp.is_file() or tmp.is_symlink():
            continue
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime >= min_age_seconds:
                tmp.unlink()
                removed.append(tmp)
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _final_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_current_umask()


def _current_umask() -> int:
    # Read, not set-and-restore: os.umask() would briefly change it for ComfyUI's other threads.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` (UTF-8, no newline translation so files are byte-identical
    on every OS)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; Windows cannot open directories, so skip there.
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def safe_join(base: str | os.PathLike[str], relative: str | os.PathLike[str]) -> Path:
    """Join ``relative`` onto ``base`` and refuse any result outside ``base``.

    Rejects absolute paths, ``..`` escapes and symlinks that resolve outside ``base``.
    Returns the resolved path.
    """
    base_resolved = Path(base).resolve()
    rel = Path(relative)
    rel_text = os.fspath(relative)
    if not rel_text or rel.is_absolute() or rel.drive or rel.anchor:
        raise StyleLoRAError(
            f"Refusing path {rel_text!r}: it must be a relative path inside {base_resolved}."
        )
    candidate = (base_resolved / rel).resolve()
    if candidate != base_resolved and base_resolved not in candidate.parents:
        raise StyleLoRAError(
            f"Refusing path {rel_text!r}: it resolves to {candidate}, which is outside "
            f"{base_resolved}. Use a file name inside that folder (no '..' and no symlinks "
            "pointing elsewhere)."
        )
    return candidate
