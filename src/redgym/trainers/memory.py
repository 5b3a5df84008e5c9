"""Process memory: resident set size readings and giving freed heap back to the OS after a step."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
from pathlib import Path


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def rss_gb() -> float:
    """Current resident set size (Linux /proc; nan elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1024**3
    except (OSError, IndexError, ValueError):
        return float("nan")


def release_memory() -> None:
    """Return freed heap to the OS after a step. Steps alternate long generation caches and training
    activations of varying shapes; without a trim glibc keeps the freed arenas and RSS creeps up step by step."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
