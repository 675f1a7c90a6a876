"""Memory readings for the memory workloads: resident set size, current and peak.

Why RSS and not tracemalloc: tracemalloc counts the bytes Python asked its
allocators for, which leaves out what a user pays on top (pymalloc arenas,
malloc headers and fragmentation, C-level allocations outside PyMem), and
it records a traceback per allocation, which makes a million submissions
several times slower and its own bookkeeping much larger than what is
measured. The resident set size is what the operating system charges the
process; with a fresh interpreter per measurement (the runner starts one per
workload, implementation and round) and a million objects, the noise of a
few pages is well under a byte per object.

Peak RSS comes from the kernel's high-water mark (``VmHWM`` on Linux, reset
with ``/proc/self/clear_refs`` before the measured region; ``ru_maxrss``
elsewhere), so no sampling thread competes with the workload for the GIL.
"""

from __future__ import annotations

import gc
import importlib
import os
import resource
import sys
from typing import Any

__all__ = ("current_rss", "peak_rss", "reset_peak", "settle")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        psutil: Any = importlib.import_module("psutil")

        return int(psutil.Process().memory_info().rss)


def reset_peak() -> bool:
    """Set the peak to the current RSS (Linux only); return whether that worked."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """Highest resident set size since start (or the last :func:`reset_peak`), in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def settle() -> None:
    """Collect garbage so that a reading does not include what is about to be freed."""
    gc.collect()
    gc.collect()
