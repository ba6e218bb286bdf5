"""Memory, measured: the peak of a piece of work and what a machine can give a run.

On CUDA the allocator's statistics; on Linux the process's resident high-water mark
(``VmHWM``), reset through ``/proc/self/clear_refs`` before the work (what the kernel counts:
weights, activations, the allocator's caches); elsewhere the growth of ``ru_maxrss``, which
sees only a new peak. Used to split batches into micro-batches that fit (:mod:`objective`),
to size the baseline's batches and to predict a run's peak (``--dry-run``).
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")
CLEAR = Path("/proc/self/clear_refs")


def _status(key: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def resident_bytes(device: torch.device) -> int:
    """What the run holds now: allocated CUDA memory, or the process's resident set."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    rss = _status("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_bytes(device: torch.device) -> int:
    """Free memory: CUDA's free memory, or ``MemAvailable`` (physical memory where missing)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class Peak:
    """The peak of the work inside :func:`peak`: ``bytes`` above what was held at its start
    (``start``); ``exact`` says whether the peak could be reset first."""

    start: int = 0
    bytes: int = 0
    exact: bool = True


@contextlib.contextmanager
def peak(device: torch.device) -> Iterator[Peak]:
    """Measure the peak memory of the work inside the block (module docstring)."""
    found = Peak(start=resident_bytes(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield found
        torch.cuda.synchronize(device)
        found.bytes = max(0, int(torch.cuda.max_memory_allocated(device)) - found.start)
        return
    try:
        CLEAR.write_text("5")  # resets VmHWM to the current resident set
    except OSError:
        found.exact = False
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    yield found
    high = _status("VmHWM") if found.exact else None
    if high is None:
        found.exact = False
        high = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    found.bytes = max(0, high - found.start)


TRANSIENT = 2**31  # bytes a batch of forward passes without gradients may take at most


def batch_that_fits(per_item: int, device: torch.device, cap: int) -> int:
    """How many items of ``per_item`` bytes of transient memory (a forward pass without
    gradients) fit in half of what the machine has free and in ``TRANSIENT`` bytes (so that
    the baseline's batches never set a run's peak above its solve's), between 1 and ``cap``."""
    room = min(0.5 * available_bytes(device), TRANSIENT)
    return max(1, min(cap, int(room // max(per_item, 1))))
