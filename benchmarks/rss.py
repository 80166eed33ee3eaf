"""This process's memory as the kernel counts it: the one reader every benchmark uses.

``VmHWM`` (peak resident set, mapped file pages included) is read from /proc on Linux. ``ru_maxrss``
is only the fallback elsewhere: Linux carries it over ``fork`` + ``exec``, so a process started from a
large parent (pytest, a benchmark that just wrote a 16 GB checkpoint) would report the parent's peak.
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Optional


def status_bytes(field: str) -> Optional[int]:
    """A memory field of /proc/self/status (``VmHWM``, ``VmRSS``) in bytes; None without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's own peak RSS: ``VmHWM`` where there is one, else ``ru_maxrss``."""
    peak = status_bytes("VmHWM")
    if peak is not None:
        return peak
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB elsewhere


def reset_peak() -> bool:
    """Restart ``VmHWM`` at the current RSS (Linux: ``5`` into /proc/self/clear_refs), so a later peak is that of
    the work after this call, not of the loading before it. False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
