"""Keep a CPU training step's memory in the process heap from one step to the next (glibc only).

By default glibc gives big freed blocks back to the kernel: blocks above its mmap threshold (at most
32 MiB) and free memory at the top of a heap beyond its trim threshold (64 MiB). A training step frees
its activations at the end and allocates them again in the next one, so every step faults its working set
back in and the kernel zeroes each page: SD1.5 at 256 px in bf16 took ~165k page faults and ~0.37 s of
kernel time a step (about 9 % of the step on 2 cores). While the steps run the thresholds are raised, so
the next step reuses the same blocks; the memory held does not grow (the step needs it anyway), and it is
handed back (``malloc_trim``) when the steps start, after each epoch's end and when training ends.

A user's own glibc tunables (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``) are left alone. On CUDA the
activations live in torch's caching allocator, which already does this.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import sys
from collections.abc import Iterator, Mapping

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# During the steps: blocks up to 1 GiB come from the heap and freed memory stays there up to 2 GiB.
_STEPS_MMAP_THRESHOLD = 1 << 30
_STEPS_TRIM_THRESHOLD = (1 << 31) - 1
# Afterwards: the values glibc's dynamic thresholds settle at in a torch process (its maximum mmap
# threshold and twice that for trimming); setting any threshold ends the dynamic adjustment for good.
_AFTER_MMAP_THRESHOLD = 32 << 20
_AFTER_TRIM_THRESHOLD = 64 << 20

_USER_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_active = False


def tuned_by_user(environ: Mapping[str, str] | None = None) -> bool:
    """The user set glibc's malloc thresholds themselves (environment variables or tunables)."""
    env = os.environ if environ is None else environ
    return any(name in env for name in _USER_TUNABLES) or "glibc.malloc" in env.get("GLIBC_TUNABLES", "")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        return libc
    except (OSError, AttributeError):
        return None


def active() -> bool:
    """Whether the heap is being kept (inside ``kept_between_steps``)."""
    return _active


def trim() -> None:
    """Hand the heap's free memory back to the kernel now (after set-up, between epochs, while the user's
    weights come back): glibc keeps freed blocks below its mmap threshold, so RAM freed would otherwise
    stay counted as used. No-op without glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def kept_between_steps(device: torch.device) -> Iterator[bool]:
    """Inside, freed blocks stay in the heap for the next step; yields whether that is in effect (CPU,
    glibc, no user tunables). Leaves with the free memory handed back."""
    global _active
    libc = _glibc() if device.type == "cpu" and not _active and not tuned_by_user() else None
    if libc is None:
        yield False
        return
    libc.malloc_trim(0)  # what the set-up freed goes back first: the steps start from their own needs
    libc.mallopt(_M_MMAP_THRESHOLD, _STEPS_MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _STEPS_TRIM_THRESHOLD)
    _active = True
    try:
        yield True
    finally:
        _active = False
        libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _AFTER_TRIM_THRESHOLD)
        libc.malloc_trim(0)
