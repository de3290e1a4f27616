"""Keep the allocator from holding freed tensors: streamed transforms free a large tensor per step.

glibc raises its mmap threshold each time a large block is freed, so later large tensors come
from the heap, which is not returned to the system: RSS then grows past the working set. Fixing
the threshold (which disables that adjustment) makes every tensor over 1 MiB its own mapping,
unmapped when freed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Ask glibc to map blocks over ``threshold`` bytes separately; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, threshold)
            and libc.mallopt(_M_TRIM_THRESHOLD, threshold)
        )
    except (OSError, AttributeError):
        return False


def reset_peak_rss() -> bool:
    """Start this process's peak RSS afresh (Linux ``clear_refs`` 5), so a task that runs in a
    reused process (datatrove's in-process and pooled workers) measures its own peak; False where
    the kernel does not allow it (the peak then includes what ran before). What earlier work
    freed but the allocator kept is handed back first, so it does not count either."""
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name is not None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's peak RSS since the last :func:`reset_peak_rss` (or its start)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
