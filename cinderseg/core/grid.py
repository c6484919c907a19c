"""Pixel grids: the checks that a CRS or a raster is metric or on another raster's grid, windows as
plain data, and which map points fall on a window's pixels.

Pixel windows are rasterio ``Window`` objects (rows down, columns right); map coordinates are in
the grid's CRS (metres for the workflow's rasters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.windows import Window

from cinderseg.core.errors import CinderSegError, InputError


def window_dict(window: Window) -> dict[str, int]:
    """A pixel window as plain integers: row_off, col_off, height, width."""
    return {
        "row_off": int(window.row_off),
        "col_off": int(window.col_off),
        "height": int(window.height),
        "width": int(window.width),
    }


def points_in_block(
    xs: Sequence[float] | np.ndarray,
    ys: Sequence[float] | np.ndarray,
    transform: rasterio.Affine,
    block: Window,
) -> np.ndarray:
    """True where the point (x, y) (map coordinates in the grid's CRS, e.g. cone centres in metres)
    falls on a pixel of ``block`` (a pixel window of the grid with affine ``transform``); NaN is
    never inside. A point on a block's left or top edge belongs to it, one on its right or bottom
    edge to the next block, so adjacent blocks share no point."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    inv = ~transform
    cols = inv.a * xs + inv.b * ys + inv.c
    rows = inv.d * xs + inv.e * ys + inv.f
    r0, c0 = float(block.row_off), float(block.col_off)
    with np.errstate(invalid="ignore"):
        return (
            (rows >= r0) & (rows < r0 + float(block.height)) & (cols >= c0) & (cols < c0 + float(block.width))
        )


def what(kind: str, region: str = "") -> str:
    """How a message names an input: ``"<kind> of region '<region>'"``, or the kind alone."""
    return f"{kind} of region '{region}'" if region else kind


def check_metric_crs(
    crs: CRS | str | None, what: str, *, path: Any = None, error: type[CinderSegError] = InputError
) -> CRS:
    """``crs`` parsed, if it is a projected CRS in metres; else ``error`` (InputError, or ConfigError for
    a config value) in one line naming ``what`` (and ``path``, the file whose CRS it is)."""
    where = "" if path is None else f": {path}"
    try:
        parsed = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    except CRSError as err:
        raise error(f"{what}: CRS {crs} is not a valid CRS ({str(err).splitlines()[0]}){where}") from err
    try:
        units, factor = parsed.linear_units_factor if parsed.is_projected else ("", 0.0)
    except CRSError:
        units, factor = "unknown", 0.0
    if not math.isclose(factor, 1.0):
        detail = f"units: {units}" if units else ("geographic" if parsed.is_geographic else "not projected")
        raise error(
            f"{what}: CRS {crs} is not projected in metres ({detail}); use a metric projected CRS such as "
            f"a UTM zone, e.g. EPSG:32605{where}"
        )
    return parsed


def check_metric_grid(ds: rasterio.DatasetReader, what: str, path: Any) -> None:
    """InputError naming ``what`` and ``path`` unless the raster has a projected CRS in metres and a
    north-up, unrotated grid (pixel sizes in metres)."""
    check_metric_crs(ds.crs, what, path=path)
    if ds.transform.b != 0 or ds.transform.d != 0:
        raise InputError(f"{what}: rotated grids are not supported: {path}")


def check_same_grid(
    ds: rasterio.DatasetReader,
    ref: rasterio.DatasetReader,
    what: str,
    path: Any,
    ref_path: Any,
    *,
    ref_kind: str = "the DEM",
) -> None:
    """InputError unless ``ds`` has exactly the grid (CRS, transform, shape) of ``ref`` (by default the
    DEM; ``ref_kind`` names it in the message)."""
    problems = []
    if (ds.height, ds.width) != (ref.height, ref.width):
        problems.append(f"{ds.height}x{ds.width} px vs {ref.height}x{ref.width}")
    if ds.crs != ref.crs:
        problems.append(f"CRS {ds.crs} vs {ref.crs}")
    tol = 1e-6 * max(abs(ref.transform.a), abs(ref.transform.e))
    if any(abs(a - b) > tol for a, b in zip(tuple(ds.transform)[:6], tuple(ref.transform)[:6], strict=True)):
        problems.append(f"transform {tuple(ds.transform)[:6]} vs {tuple(ref.transform)[:6]}")
    if problems:
        raise InputError(f"{what}: {path} is not on the grid of {ref_kind} {ref_path}: {'; '.join(problems)}")
