"""The window grid of whole-region prediction, the blending weights, the strip writer, and test-time
augmentation.

Windows. Square windows of ``window_px`` start every ``window_px - overlap_px`` px along each axis
(:func:`axis_windows`). The last window of a row or column ends flush with the raster's right/bottom
edge and is only as large as needed (overlapping its neighbour by at least ``overlap_px``, rounded up
to 32 px, not below the training tile size), where the network takes other input shapes: the edges are
then not predicted again in full windows (on 6500 x 4000 px, 1.29 window pixels per raster pixel
instead of 1.61). Otherwise full-size windows end flush with the edges. An axis shorter than a window
has one window, zero-padded beyond the raster. Nodata feature pixels (non-finite or the raster's
nodata in any band) are 0 for the network, as in the training tiles (:func:`read_window`).

Blending. Every window's probabilities enter a running weighted sum and weight sum (the output is
their ratio). A window's weight is the outer product of two 1-D profiles (:func:`weight_profile`): on
a side with a neighbouring window, ``crop_px`` px of zero weight at the edge (where zero padding and
the missing context spoil the network's output), then a raised-cosine ramp ``sin^2`` up to 1 over the
rest of the overlap (``overlap_px - 2 crop_px`` px), so that two regular neighbours' weights sum to
exactly 1 across their overlap; a side on the raster's edge keeps full weight up to the edge. Every
pixel thus has a positive weight sum, and a constant network output stitches to the same constant.

Test-time augmentation (``tta``, :func:`predict_windows`): ``flips`` averages the identity and the
horizontal and vertical flips, ``d4`` the 8 symmetries of the square (quarter turns, each optionally
mirrored); each prediction is transformed back before averaging. Cones have no orientation, so this
costs 3x / 8x time for a smoother map.

Memory. Windows are processed one window row at a time; the weighted sums live in a strip buffer
(:class:`StripWriter`) one window (plus one output block) high spanning the raster's width, and rows
that no later window touches are written as soon as a whole output block row (256 px) is final.
Memory is therefore independent of the raster's height, linear in its width, and the features are
read window by window, into two sets of buffers (:class:`WindowBuffers`) that alternate batches, so
that no window costs fresh memory that the system must map and zero-fill.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from cinderseg.core.raster import BLOCK_PX, NODATA_FLOAT, atomic_write

if TYPE_CHECKING:
    from cinderseg.nn.predict import Network
    from cinderseg.nn.settings import PredictSettings

DOWNSAMPLING = 32
"""The U-Net halves a window 5 times: window sides are multiples of this
(:data:`cinderseg.nn.encoders.DOWNSAMPLING`, repeated here so that prediction need not import Keras)."""

MIN_WINDOW_PX = 64
"""The smallest window side (the schema's minimum of ``predict.window_px``)."""

Windows = list[tuple[int, int]]
"""(origin, size) of the windows along one axis, px."""


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one raster (origin, size per row and column), their weight profiles, the window
    shapes, and the output's GeoTIFF profile."""

    rows: Windows
    cols: Windows
    profiles_y: list[np.ndarray]
    profiles_x: list[np.ndarray]
    shapes: list[tuple[int, int]]
    profile: dict[str, Any]
    _weights: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @property
    def windows(self) -> int:
        return len(self.rows) * len(self.cols)

    def weight(self, i: int, j: int, h: int, w: int) -> np.ndarray:
        """The 2-D blending weight of window (row ``i``, column ``j``) clipped to ``h`` x ``w`` px; one
        array per kind of window (size, neighbours on each side), made once."""
        ny, nx = len(self.rows), len(self.cols)
        key = (self.rows[i][1], i > 0, i + 1 < ny, self.cols[j][1], j > 0, j + 1 < nx, h, w)
        if key not in self._weights:
            self._weights[key] = self.profiles_y[i][:h, None] * self.profiles_x[j][None, :w]
        return self._weights[key]


def axis_windows(n: int, window: int, overlap: int, *, min_px: int | None = None) -> list[tuple[int, int]]:
    """(origin, size) of the windows along an axis of ``n`` px.

    Windows of ``window`` px start every ``window - overlap`` px; the last one ends flush with the
    axis' end. With ``min_px`` (a network that takes any multiple of 32) the last window is only as
    large as needed to reach the end while overlapping its neighbour by ``overlap`` px, rounded up to
    a multiple of 32 and at least ``min_px``; otherwise it has the full size. An axis shorter than a
    window has one window, reaching beyond the end (padded), of ``window`` px or, with ``min_px``,
    of the axis' length rounded up to 32 px (at least ``min_px``).
    """

    def last_size(needed: int) -> int:
        if min_px is None:
            return window
        return min(window, max(DOWNSAMPLING * math.ceil(needed / DOWNSAMPLING), min_px))

    if n <= window:
        return [(0, last_size(n))]
    windows = []
    origin = 0
    while origin + window < n:
        windows.append((origin, window))
        origin += window - overlap
    size = last_size(n - origin)
    windows.append((n - size, size))
    return windows


def weight_profile(window: int, overlap: int, crop: int, *, lead: bool, trail: bool) -> np.ndarray:
    """1-D blending weight (float32, ``window`` values) of a window along one axis.

    ``lead``/``trail``: whether a neighbouring window overlaps its start/end. On such a side ``crop``
    px get weight 0, then a ``sin^2`` ramp rises to 1 over ``overlap - 2 crop`` px; the ramps of two
    neighbours ``window - overlap`` apart sum to exactly 1. Sides without a neighbour keep weight 1.
    """
    w = np.ones(window, dtype=np.float64)
    ramp_px = overlap - 2 * crop
    if overlap > 0 and ramp_px > 0:
        t = (np.arange(ramp_px) + 0.5) / ramp_px
        rise = np.concatenate([np.zeros(crop), np.sin(0.5 * np.pi * t) ** 2])  # overlap - crop values
        if lead:
            w[: rise.size] = np.minimum(w[: rise.size], rise)
        if trail:
            w[window - rise.size :] = np.minimum(w[window - rise.size :], rise[::-1])
    return w.astype(np.float32)


def axis_profiles(windows: Sequence[tuple[int, int]], overlap: int, crop: int) -> list[np.ndarray]:
    """The weight profile of each window of :func:`axis_windows` (ramps only towards neighbours)."""
    n = len(windows)
    return [
        weight_profile(size, overlap, crop, lead=i > 0, trail=i + 1 < n)
        for i, (_, size) in enumerate(windows)
    ]


def overview_factors(height: int, width: int, block: int = BLOCK_PX) -> list[int]:
    """Overview decimation factors 2, 4, ... until the smallest overview fits in one block."""
    factors = []
    factor = 2
    while math.ceil(max(height, width) / (factor // 2)) > block:
        factors.append(factor)
        factor *= 2
    return factors


class StripWriter:
    """Weighted sums of a strip of rows spanning the raster's width; writes rows as they become final.

    Rows ``[base, base + capacity)`` of the raster are held; :meth:`flush` writes the rows before a
    given one in whole output-block rows (the last chunk may be partial) and moves the strip down.
    With an ``executor`` (one thread) the rows are written there while the caller goes on; call
    :meth:`wait` before closing the output.
    """

    def __init__(
        self, dst: rasterio.io.DatasetWriter, capacity: int, block: int, executor: Executor | None = None
    ) -> None:
        self.dst = dst
        self.block = block
        self.width = dst.width
        self.height = dst.height
        self.base = 0
        self.acc = np.zeros((capacity, self.width), dtype=np.float32)
        self.wsum = np.zeros((capacity, self.width), dtype=np.float32)
        self.valid = np.zeros((capacity, self.width), dtype=bool)
        self.scratch = np.empty(0, dtype=np.float32)
        self.valid_pixels = 0
        self.uncovered_pixels = 0
        self.executor = executor
        self.pending: list[Future[None]] = []

    def add(self, row: int, col: int, prob: np.ndarray, weight: np.ndarray, valid: np.ndarray) -> None:
        """Add one window's probabilities (clipped to the raster) with its weights."""
        h, w = prob.shape
        r = row - self.base
        if self.scratch.size < h * w:
            self.scratch = np.empty(h * w, dtype=np.float32)
        weighted = self.scratch[: h * w].reshape(h, w)
        np.multiply(prob, weight, out=weighted)
        self.acc[r : r + h, col : col + w] += weighted
        self.wsum[r : r + h, col : col + w] += weight
        self.valid[r : r + h, col : col + w] = valid

    def flush(self, before: int, *, final: bool = False) -> None:
        """Write the rows above ``before`` (rounded down to a block row unless ``final``)."""
        end = min(before, self.height) if final else (before // self.block) * self.block
        n = end - self.base
        if n <= 0:
            return
        wsum = self.wsum[:n]
        covered = wsum > 0
        valid = self.valid[:n]
        out = np.full((n, self.width), NODATA_FLOAT, dtype=np.float32)
        good = valid & covered
        np.divide(self.acc[:n], wsum, out=out, where=good)
        np.clip(out, 0.0, 1.0, out=out, where=good)
        self.valid_pixels += int(good.sum())
        self.uncovered_pixels += int((valid & ~covered).sum())
        self._write(out, Window(0, self.base, self.width, n))
        for buf in (self.acc, self.wsum, self.valid):
            buf[:-n] = buf[n:]  # numpy copies overlapping ranges safely
            buf[-n:] = 0
        self.base = end

    def _write(self, out: np.ndarray, window: Window) -> None:
        if self.executor is None:
            self.dst.write(out, 1, window=window)
            return
        done = [f for f in self.pending if f.done()]
        for f in done:
            f.result()  # a failed write raises here
            self.pending.remove(f)
        self.pending.append(self.executor.submit(self.dst.write, out, 1, window=window))

    def wait(self) -> None:
        """Wait for the rows being written (raising a failed write's error)."""
        for f in self.pending:
            f.result()
        self.pending.clear()


def window_batches(windows: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of consecutive windows of the same size, at most ``batch_size`` per batch."""
    batches: list[list[int]] = []
    for j, (_, size) in enumerate(windows):
        if batches and len(batches[-1]) < batch_size and windows[batches[-1][0]][1] == size:
            batches[-1].append(j)
        else:
            batches.append([j])
    return batches


def effective_window(settings: PredictSettings, height: int, width: int, tile_size: int | None) -> int:
    """The window size for a raster: ``window_px``, or for a raster smaller than a window its larger
    side rounded up to a multiple of 32 (not below the training tile size nor 64 px)."""
    fit = DOWNSAMPLING * math.ceil(max(height, width) / DOWNSAMPLING)
    return min(settings.window_px, max(fit, tile_size or 0, MIN_WINDOW_PX))


class WindowBuffers:
    """Arrays that the reads of one batch of windows reuse from batch to batch: reading a window then
    allocates (and the system zero-fills) no new memory. :func:`write_probability` keeps two, used by
    alternate batches: one is filled by the I/O thread while the network reads the other."""

    def __init__(self) -> None:
        self._flat: dict[tuple[str, int, str], np.ndarray] = {}

    def array(self, name: str, k: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A contiguous array of ``shape`` for window ``k`` of the batch (contents undefined)."""
        dtype = np.dtype(dtype)
        key, n = (name, k, dtype.str), math.prod(shape)
        flat = self._flat.get(key)
        if flat is None or flat.size < n:
            flat = self._flat[key] = np.empty(n, dtype=dtype)
        return flat[:n].reshape(shape)


def read_window(
    ds: rasterio.DatasetReader,
    row: int,
    col: int,
    size: tuple[int, int],
    nodata: float | None,
    buffers: WindowBuffers | None = None,
    k: int = 0,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Window of ``size`` (rows, columns) as (rows, columns, C) float32 with nodata and pixels outside
    the raster 0, its valid mask, and the number of its rows/columns inside the raster. With
    ``buffers`` the arrays are those of window ``k`` in it (valid until it is used again)."""
    buffers = buffers if buffers is not None else WindowBuffers()
    h, w, c = min(size[0], ds.height - row), min(size[1], ds.width - col), ds.count
    data = ds.read(window=Window(col, row, w, h), out=buffers.array("data", k, (c, h, w), np.float32))
    finite = buffers.array("finite", k, (c, h, w), bool)
    np.isfinite(data, out=finite)
    valid = buffers.array("valid", k, (h, w), bool)
    np.logical_and.reduce(finite, axis=0, out=valid)
    if nodata is not None and not math.isnan(nodata):
        np.not_equal(data, np.float32(nodata), out=finite)
        valid &= np.logical_and.reduce(finite, axis=0)
    x = buffers.array("x", k, (*size, c), np.float32)
    x[h:] = 0.0
    x[:h, w:] = 0.0
    inside = x[:h, :w]
    inside[...] = np.moveaxis(data, 0, -1)
    inside[~valid] = 0.0
    return x, valid, h, w


# --------------------------------------------------------------------------- the window loop


def write_probability(
    ds: rasterio.DatasetReader,
    out_path: str | os.PathLike[str],
    predictor: Network,
    plan: WindowPlan,
    settings: PredictSettings,
    advance: Callable[[float], None],
) -> dict[str, Any]:
    """Predict every window of ``plan`` row by row into the output GeoTIFF ``out_path`` (atomically);
    counts for the statistics (windows skipped, network calls, valid pixels, overview factors).

    One I/O thread reads the next batch of windows and writes finished rows while the network runs;
    ``ds`` and the output are used by that thread only from the first read on."""
    block = int(plan.profile.get("blockysize", ds.height))
    counts = {"windows_skipped": 0, "network_calls": 0}
    jobs = [(i, b) for i in range(len(plan.rows)) for b in window_batches(plan.cols, settings.batch_size)]
    with (
        atomic_write(out_path) as tmp,
        rasterio.open(tmp, "w", **plan.profile) as dst,
        ThreadPoolExecutor(1, thread_name_prefix="cinderseg-io") as io,
    ):
        dst.set_band_description(1, "probability")
        dst.update_tags(
            model=predictor.name,
            channels=",".join(predictor.channels or list(ds.descriptions)),
            window_px=str(predictor.window_px),
            overlap_px=str(settings.overlap_px),
            crop_px=str(settings.crop_px),
            tta=settings.tta,
            temperature=repr(predictor.temperature),
        )
        strip = StripWriter(dst, predictor.window_px + block, block, executor=io)
        buffers = (WindowBuffers(), WindowBuffers())  # alternate batches: read one, predict the other
        pending: Future[list[WindowRead]] | None = (
            io.submit(_read_batch, ds, plan, *jobs[0], buffers[0]) if jobs else None
        )
        row = -1
        for n, (i, batch) in enumerate(jobs):
            if i != row:
                strip.flush(plan.rows[i][0])
                row = i
            assert pending is not None
            reads = pending.result()
            pending = (
                io.submit(_read_batch, ds, plan, *jobs[n + 1], buffers[(n + 1) % 2])
                if n + 1 < len(jobs)
                else None
            )
            _predict_batch(strip, predictor, plan, settings, i, batch, reads, counts)
            advance(len(batch))
        strip.flush(ds.height, final=True)
        strip.wait()
        if strip.uncovered_pixels:  # cannot happen with validated settings: a bug if it does
            raise RuntimeError(f"{out_path}: {strip.uncovered_pixels} valid pixels got no window weight")
        factors = overview_factors(ds.height, ds.width)
        if factors:
            dst.build_overviews(factors, Resampling.average)
            dst.update_tags(ns="rio_overview", resampling="average")
    return {**counts, "valid_pixels": strip.valid_pixels, "overviews": factors}


WindowRead = tuple[np.ndarray, np.ndarray, int, int]
"""A window read: features (h, w, C), valid mask, rows and columns inside the raster."""


def _read_batch(
    ds: rasterio.DatasetReader, plan: WindowPlan, i: int, batch: list[int], buffers: WindowBuffers
) -> list[WindowRead]:
    """The windows of row ``i`` and columns ``batch`` (:func:`read_window`), in ``buffers``."""
    row, size_y = plan.rows[i]
    return [
        read_window(ds, row, plan.cols[j][0], (size_y, plan.cols[j][1]), ds.nodata, buffers, k)
        for k, j in enumerate(batch)
    ]


def _predict_batch(
    strip: StripWriter,
    predictor: Network,
    plan: WindowPlan,
    settings: PredictSettings,
    i: int,
    batch: list[int],
    reads: list[WindowRead],
    counts: dict[str, int],
) -> None:
    """Predict the windows ``reads`` (row ``i``, columns ``batch``) and add them to ``strip``; count
    skipped windows (no valid pixel: no network call) and network calls."""
    keep = [k for k, r in enumerate(reads) if r[1].any()]
    counts["windows_skipped"] += len(batch) - len(keep)
    if not keep:
        return
    counts["network_calls"] += len(tta_transforms(settings.tta))
    x = reads[keep[0]][0][None] if len(keep) == 1 else np.stack([reads[k][0] for k in keep])
    prob = predict_windows(predictor, x, settings.tta)
    for p, k in enumerate(keep):
        _, valid, h, w = reads[k]
        weight = plan.weight(i, batch[k], h, w)
        strip.add(plan.rows[i][0], plan.cols[batch[k]][0], prob[p, :h, :w], weight, valid)


# --------------------------------------------------------------------------- test-time augmentation


def tta_transforms(mode: str) -> list[tuple[int, bool]]:
    """(quarter turns, mirror) pairs applied to the windows; mirror flips the columns after turning."""
    if mode == "none":
        return [(0, False)]
    if mode == "flips":
        return [(0, False), (0, True), (2, True)]  # identity, left-right, up-down (= half turn + mirror)
    return [(k, m) for m in (False, True) for k in range(4)]


def _forward(x: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    y = np.rot90(x, turns, axes=(1, 2)) if turns else x
    return y[:, :, ::-1] if mirror else y


def _backward(y: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    if mirror:
        y = y[:, :, ::-1]
    return np.rot90(y, -turns, axes=(1, 2)) if turns else y


def predict_windows(predictor: Network, x: np.ndarray, tta: str = "none") -> np.ndarray:
    """Calibrated probabilities (B, h, w) float32 of a batch of windows ``x`` (B, h, w, C), averaged
    over ``tta``."""
    transforms = tta_transforms(tta)
    if transforms == [(0, False)]:
        return predictor.run(np.ascontiguousarray(x, dtype=np.float32))
    out = np.zeros(x.shape[:3], dtype=np.float32)
    for turns, mirror in transforms:
        xt = np.ascontiguousarray(_forward(x, turns, mirror), dtype=np.float32)
        out += _backward(predictor.run(xt), turns, mirror)
    out /= len(transforms)
    return out
