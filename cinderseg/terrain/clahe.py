"""Contrast-limited adaptive histogram equalisation (CLAHE) that can be computed block by block.

The algorithm of :func:`skimage.exposure.equalize_adapthist` (same quantisation, clipping and bilinear
interpolation of the contextual regions' grey-level maps) on a grid of ``k`` x ``k`` px regions anchored
at the raster's upper-left corner, so that a window aligned on that grid gives exactly the
whole-raster result on its core. Levels are 0..``CLAHE_LEVELS - 1``; skimage's final min-max stretch
(which depends on the image extent) is left out. Used by the ``clahe`` channel of
:mod:`cinderseg.terrain.features`.
"""

from __future__ import annotations

import numpy as np

# CLAHE constants of skimage.exposure.equalize_adapthist.
CLAHE_LEVELS = 2**14
CLAHE_NBINS = 256


def _clip_histogram(hist: np.ndarray, clip_limit: int) -> np.ndarray:
    """Clip a histogram and redistribute the excess (verbatim from skimage, BSD licence)."""
    excess_mask = hist > clip_limit
    excess = hist[excess_mask]
    n_excess = excess.sum() - excess.size * clip_limit
    hist[excess_mask] = clip_limit

    bin_incr = n_excess // hist.size
    upper = clip_limit - bin_incr

    low_mask = hist < upper
    n_excess -= hist[low_mask].size * bin_incr
    hist[low_mask] += bin_incr

    mid_mask = np.logical_and(hist >= upper, hist < clip_limit)
    mid = hist[mid_mask]
    n_excess += mid.sum() - mid.size * clip_limit
    hist[mid_mask] = clip_limit

    while n_excess > 0:
        prev_n_excess = n_excess
        for index in range(hist.size):
            under_mask = hist < clip_limit
            step_size = max(1, np.count_nonzero(under_mask) // n_excess)
            under_mask = under_mask[index::step_size]
            hist[index::step_size][under_mask] += 1
            n_excess -= np.count_nonzero(under_mask)
            if n_excess <= 0:
                break
        if prev_n_excess == n_excess:
            break
    return hist


def _clahe_quantise(norm: np.ndarray) -> np.ndarray:
    """0..1 values to skimage's CLAHE histogram bins (via its 16-bit and 14-bit levels)."""
    u16 = np.clip(np.rint(np.multiply(norm, 65535, dtype=np.float64)), 0, 65535)
    levels = np.round(u16 / 65535.0 * float(CLAHE_LEVELS - 1)).astype(np.int64)
    return levels // (1 + CLAHE_LEVELS // CLAHE_NBINS)


def _clahe_maps(bins: np.ndarray, k: int, clip_limit: float, pad_rows: int, pad_cols: int) -> np.ndarray:
    """Grey-level maps (n_row_regions, n_col_regions, nbins) of k x k contextual regions.

    ``bins`` starts on the region grid; ``pad_rows``/``pad_cols`` extend it at the end by
    reflection (as skimage does at the image's bottom/right edge) to whole regions.
    """
    if pad_rows or pad_cols:
        bins = np.pad(bins, ((0, pad_rows), (0, pad_cols)), mode="reflect")
    nr, nc = bins.shape[0] // k, bins.shape[1] // k
    regions = bins[: nr * k, : nc * k].reshape(nr, k, nc, k).transpose(0, 2, 1, 3).reshape(nr * nc, k * k)
    offsets = (np.arange(nr * nc, dtype=np.int64) * CLAHE_NBINS)[:, None]
    hist = np.bincount((regions + offsets).ravel(), minlength=nr * nc * CLAHE_NBINS)
    hist = hist.reshape(nr * nc, CLAHE_NBINS)
    n_pixels = k * k
    clim = int(np.clip(clip_limit * n_pixels, 1, None)) if clip_limit > 0 else n_pixels
    for row in hist:
        _clip_histogram(row, clim)
    maps = np.cumsum(hist, axis=-1).astype(float)
    maps *= (CLAHE_LEVELS - 1) / n_pixels
    np.clip(maps, None, CLAHE_LEVELS - 1, out=maps)
    return maps.astype(np.int64).reshape(nr, nc, CLAHE_NBINS)


def clahe_window(
    norm: np.ndarray,
    k: int,
    clip_limit: float,
    *,
    at_end: tuple[bool, bool],
    core: tuple[slice, slice],
) -> np.ndarray:
    """CLAHE levels (0..16383, float32) of ``norm[core]``; ``norm`` starts on the region grid.

    ``at_end`` tells whether the window ends at the raster's bottom / right edge (then the
    last partial region is completed by reflection, as in skimage); otherwise the window must
    end on the grid.
    """
    h, w = norm.shape
    bins = _clahe_quantise(norm)
    pad_r = (k - h % k) % k if at_end[0] else 0
    pad_c = (k - w % k) % k if at_end[1] else 0
    maps = _clahe_maps(bins, k, clip_limit, pad_r, pad_c)
    nr, nc = maps.shape[:2]
    rows = np.arange(core[0].start, core[0].stop)
    cols = np.arange(core[1].start, core[1].stop)
    # skimage: pixel y lies in processing block p = (y + k//2) // k at offset i; it blends
    # the maps of regions p-1 (weight 1 - i/k) and p (weight i/k), clamped at the edges.
    pr, ir = np.divmod(rows + k // 2, k)
    pc, ic = np.divmod(cols + k // 2, k)
    frac = np.arange(k) / k
    inv = 1 - frac
    rlo, rhi = np.clip(pr - 1, 0, nr - 1), np.clip(pr, 0, nr - 1)
    clo, chi = np.clip(pc - 1, 0, nc - 1), np.clip(pc, 0, nc - 1)
    b = bins[core]
    result = np.zeros(b.shape, dtype=np.float32)
    for e_r, e_c in ((0, 0), (0, 1), (1, 0), (1, 1)):
        mr = (rhi if e_r else rlo)[:, None]
        mc = (chi if e_c else clo)[None, :]
        mapped = maps[mr, mc, b]
        coef = (frac[ic] if e_c else inv[ic])[None, :] * (frac[ir] if e_r else inv[ir])[:, None]
        result += (mapped * coef).astype(np.float32)
    return result.astype(np.uint16).astype(np.float32)


def clahe(norm: np.ndarray, kernel_px: int, clip_limit: float) -> np.ndarray:
    """CLAHE of a whole in-memory 0..1 image, 0..1 float32 (the ``clahe`` channel of a raster in one block).

    Equals ``skimage.exposure.equalize_adapthist(norm, kernel_px, clip_limit)`` up to that
    function's final min-max stretch.
    """
    norm = np.asarray(norm, dtype=np.float64)
    full = (slice(0, norm.shape[0]), slice(0, norm.shape[1]))
    return clahe_window(norm, kernel_px, clip_limit, at_end=(True, True), core=full) / np.float32(
        CLAHE_LEVELS - 1
    )
