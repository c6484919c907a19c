"""The C heap of a long step: freed memory handed back to the operating system (glibc; no-ops elsewhere).

glibc keeps most of what a process frees for reuse, so a step's resident memory stays at its peak:
after the loose candidate search of a whole SRTM tile about 350 MiB of free heap, which forked
workers would then count again (bench/README.md S11). :func:`release_free_heap` hands such pages back
once. glibc's thresholds (``mallopt``) are left as they are: the predict step reuses its window
buffers and ONNX Runtime's arena holds the network's activations, so a 1 MiB mmap threshold would save
3 MiB of its peak and cost 1.1x its time (bench/README.md S4).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the operating system now (glibc's ``malloc_trim``); False
    where there is no glibc. A few milliseconds; call it after a phase that freed much."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
