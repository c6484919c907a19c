"""Pieces of work in forked worker processes: results in order, closures, errors, the serial path."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from cinderseg.core.errors import InputError
from cinderseg.core.parallel import can_fork, chunks, fork_map


def test_results_come_back_in_order_from_other_processes():
    data = np.arange(100.0)  # a closure over the parent's array: the workers inherit it

    def piece(span: range) -> tuple[int, float]:
        return os.getpid(), float(data[span.start : span.stop].sum())

    pieces = chunks(len(data), 2, min_size=10)
    got = fork_map(piece, pieces, 2)
    assert [s for _, s in got] == [float(data[p.start : p.stop].sum()) for p in pieces]
    pids = {pid for pid, _ in got}
    if can_fork():
        assert os.getpid() not in pids
    assert [pid for pid, _ in fork_map(piece, pieces, 1)] == [os.getpid()] * len(pieces)


def test_an_error_in_a_worker_is_raised_in_the_parent():
    def piece(i: int) -> int:
        if i == 3:
            raise InputError("region 'x': bad piece 3")
        return i

    with pytest.raises(InputError, match="bad piece 3"):
        fork_map(piece, list(range(6)), 2)


@pytest.mark.parametrize(
    ("n", "workers", "min_size", "expected"),
    [(0, 2, 1, 0), (5, 1, 1, 1), (100, 2, 10, 8), (30, 2, 10, 3), (7, 4, 10, 1)],
)
def test_chunks_cover_the_range_once(n, workers, min_size, expected):
    pieces = chunks(n, workers, min_size=min_size)
    assert len(pieces) == expected
    assert [i for p in pieces for i in p] == list(range(n))


@pytest.mark.skipif(not can_fork(), reason="no fork here")
def test_a_worker_never_finalises_garbage_it_inherited(tmp_path):
    """Garbage of the parent (a cycle whose finaliser would take TensorFlow's locks, say) is finalised by
    the parent, never by a worker's collection, where a lock held at the fork stays held forever."""
    record = tmp_path / "finalised_by.txt"

    class Finalised:
        def __del__(self) -> None:
            with open(record, "a") as f:
                f.write(f"{os.getpid()}\n")

    was_enabled = gc.isenabled()
    gc.disable()  # the cycle below stays uncollected until the workers run
    try:
        cycle = Finalised()
        cycle.me = cycle
        del cycle

        def piece(i: int) -> int:
            gc.collect()  # a worker's collection: must not reach the parent's objects
            return os.getpid()

        pids = set(fork_map(piece, [0, 1, 2, 3], 2))
        assert os.getpid() not in pids
        assert not record.exists()
        gc.collect()
        assert record.read_text().split() == [str(os.getpid())]
    finally:
        if was_enabled:
            gc.enable()
