"""Memory of the training device as the plan reads it: what this process holds now, its peak since a
reset, and what is free. The CPU's figures are the process's RSS (``/proc/self/status``) and the system's
available memory; a GPU's are torch's allocator figures and ``mem_get_info``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def held_bytes(device: torch.device) -> int | None:
    """What this process holds on ``device`` now (CPU: resident set size)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the process's peak RSS (VmHWM) to its current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_bytes(device: torch.device) -> int | None:
    """The most this process held on ``device`` since :func:`reset_peak` (CPU: VmHWM)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def free_bytes(device: torch.device) -> int | None:
    """Memory the device can still give (CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
