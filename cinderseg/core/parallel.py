"""Independent pieces of a step run in forked worker processes, results in order.

The GIS steps' heavy loops (the classical detector's outlines, the second stage's candidate
measurements) hold the GIL in many small numpy calls, so threads do not help them; forked processes
do, and they see the parent's arrays without copying them (copy-on-write). A piece returns what it
found (pickled back); a raster it reads is opened anew in the worker, never through the parent's
handle (a file offset shared across processes would mix their reads). Each worker's BLAS runs one
thread: the workers are the parallelism, and BLAS threads on top of them only contend for the cores.

The parent's objects are frozen out of the garbage collector while it forks (:func:`gc.freeze`), so that
a worker never finalises garbage it inherited. A process that has imported TensorFlow holds garbage
whose finalisers take TensorFlow's locks, and a lock held by one of the parent's threads at the fork
stays held in the child, where no thread will release it: a worker that collected such garbage
aborted (``Mutex::Fer while waiting on Condition``) mid-step. Frozen objects are also not written to
by the workers' collections, so their pages stay shared with the parent.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from threadpoolctl import threadpool_limits

from cinderseg.core.memory import release_free_heap

T = TypeVar("T")
R = TypeVar("R")

_TASK: list[Callable[[object], object]] = []  # the function of the running map, inherited by the fork


def _run(item: object) -> object:
    return _TASK[-1](item)


def _one_blas_thread() -> None:
    threadpool_limits(1)


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux, macOS; not Windows)."""
    return "fork" in multiprocessing.get_all_start_methods()


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """The objects alive now out of reach of the garbage collector in this block (and in processes
    forked in it); unfrozen after it unless they were frozen before."""
    already = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not already:
            gc.unfreeze()


def fork_map(func: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[func(item) for item in items]``, in up to ``workers`` forked processes when there are several
    items (``func`` may be a closure: the workers inherit it); in this process when ``workers`` <= 1,
    for a single item, or where processes cannot be forked. An exception in a worker is raised here."""
    if workers <= 1 or len(items) <= 1 or not can_fork():
        return [func(item) for item in items]
    release_free_heap()  # the workers then start from the parent's live memory only
    _TASK.append(func)  # type: ignore[arg-type]
    try:
        with (
            _frozen_heap(),
            ProcessPoolExecutor(
                max_workers=min(workers, len(items)),
                mp_context=multiprocessing.get_context("fork"),
                initializer=_one_blas_thread,
            ) as pool,
        ):
            return list(pool.map(_run, items))  # type: ignore[arg-type]
    finally:
        _TASK.pop()


def chunks(n: int, workers: int, *, per_worker: int = 4, min_size: int = 1) -> list[range]:
    """``range(n)`` cut into about ``per_worker`` pieces per worker (at least ``min_size`` each), so
    that uneven pieces still keep every worker busy; one piece when ``workers`` <= 1."""
    if workers <= 1 or n <= min_size:
        return [range(n)] if n else []
    count = max(1, min(workers * per_worker, n // min_size))
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]
