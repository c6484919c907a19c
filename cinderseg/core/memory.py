"""The C heap of a long step: freed memory handed back to the operating system (glibc; no-ops elsewhere).

glibc keeps most of what a process frees for reuse, so a step's resident memory stays at its peak:
after the loose candidate search of a whole SRTM tile about 350 MiB of free heap, which forked
workers would then count again (bench/README.md S11). :func:`release_free_heap` hands such pages back
once; :func:`returning_freed_memory` makes every large block go back as soon as it is freed, for the
duration of a block of code only: outside it, that setting makes numpy's large temporaries cost a
fresh mapping each (the vectorize step after a prediction in one process: 1.3x the time,
bench/README.md S11).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1
"""glibc's ``mallopt`` parameter: free memory at the top of the heap above this many bytes is returned."""
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter: allocations of at least this many bytes get their own mapping."""
SETTLED_MMAP_THRESHOLD = 32 * 2**20
"""Where glibc's own adaptive threshold ends up on 64-bit systems once large blocks have been freed
(``DEFAULT_MMAP_THRESHOLD_MAX``), with twice that as the trim threshold, as its adaptive rule sets
them. A threshold set by ``mallopt`` stops adapting, so leaving a :func:`returning_freed_memory`
block restores these values rather than the adaptive rule."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the operating system now (glibc's ``malloc_trim``); False
    where there is no glibc. A few milliseconds; call it after a phase that freed much."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def _mallopt(parameter: int, value: int) -> bool:
    libc = _libc()
    return libc is not None and bool(libc.mallopt(parameter, int(value)))


@contextlib.contextmanager
def returning_freed_memory(threshold_bytes: int = 1 << 20) -> Iterator[bool]:
    """Inside the block, every allocation of ``threshold_bytes`` or more gets its own mapping, returned
    to the system as soon as it is freed; yields whether that took effect (False off glibc).

    Without it glibc raises its threshold to the largest block freed so far (up to 32 MiB), after which
    the predict step's window-sized arrays (4-16 MiB, allocated and freed for every window, in two
    threads) come from heaps that keep their peak: measured on a 3330 x 3152 px raster, peak RSS
    668 MiB by default, 503 MiB with a 1 MiB threshold, same speed. The setting is process-wide, so
    it ends with the block (see :data:`SETTLED_MMAP_THRESHOLD`)."""
    applied = _mallopt(M_MMAP_THRESHOLD, threshold_bytes)
    try:
        yield applied
    finally:
        if applied:
            _mallopt(M_MMAP_THRESHOLD, SETTLED_MMAP_THRESHOLD)
            _mallopt(M_TRIM_THRESHOLD, 2 * SETTLED_MMAP_THRESHOLD)
