"""Raster helpers shared by the GIS steps: atomic writes, checked opening, block iteration.

Conventions for every raster the workflow writes:
- elevation and feature rasters are float32 with nodata ``NODATA_FLOAT`` (-9999.0);
- masks are uint8 (0 background, 1 cone) with nodata ``MASK_NODATA`` (255);
- GeoTIFFs are tiled (256 px blocks), deflate-compressed and BigTIFF when needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from cinderseg.core.errors import CinderSegError, InputError, write_failure

NODATA_FLOAT = -9999.0
MASK_NODATA = 255
BLOCK_PX = 256


def _temporary_name(final: Path, pid: int) -> Path:
    return final.with_name(f".{final.stem}.tmp{pid}{final.suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove the temporaries of ``final`` left by writers that were killed (their process is gone)."""
    pattern = re.compile(rf"^\.{re.escape(final.stem)}\.tmp(\d+){re.escape(final.suffix)}$")
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for p in final.parent.iterdir():
            match = pattern.match(p.name)
            if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    The temporary name (``.{stem}.tmp{pid}{suffix}``) keeps the suffix so that drivers chosen by
    extension still work. Temporaries of ``path`` left by a killed writer are removed first. On any
    exception the temporary file is removed and ``path`` is left untouched; a full disk or a
    read-only folder becomes an OutputError naming ``path``.
    """
    final = Path(path)
    tmp = _temporary_name(final, os.getpid())
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
        yield tmp
        os.replace(tmp, final)
    except BaseException as err:
        failure = write_failure(err, final) if isinstance(err, Exception) else None
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if failure is not None and not isinstance(err, CinderSegError):
            raise failure from err
        raise


def geotiff_profile(
    *,
    width: int,
    height: int,
    count: int,
    dtype: str,
    crs: CRS | str,
    transform: Any,
    nodata: float | int | None,
) -> dict[str, Any]:
    """Creation options for a tiled, compressed GeoTIFF that opens in QGIS as is."""
    tiled = width >= BLOCK_PX and height >= BLOCK_PX
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 3 if dtype.startswith("float") else 2,
        "bigtiff": "IF_SAFER",
        "interleave": "pixel" if count > 1 else "band",
    }
    if tiled:
        profile.update(tiled=True, blockxsize=BLOCK_PX, blockysize=BLOCK_PX)
    if dtype == "uint8":
        profile["predictor"] = 1
    return profile


def file_digest(path: str | os.PathLike[str], name: str = "sha256") -> str:
    """Hex digest (``name``: "sha256", "md5") of a file, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.new(name, usedforsecurity=False)).hexdigest()


def check_input_file(path: str | os.PathLike[str], *, what: str) -> Path:
    """Fail with one line if an input file is missing or empty; ``what`` names its role."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what}: file not found: {p}")
    if p.is_file() and p.stat().st_size == 0:
        raise InputError(f"{what}: file is empty (0 bytes): {p}")
    return p


def open_raster(path: str | os.PathLike[str], *, what: str = "raster") -> rasterio.DatasetReader:
    """Open a raster for reading, failing with one line on missing, empty, corrupt or CRS-less files.

    ``what`` names the role of the file in the message (for example ``"DEM of region 'x'"``).
    """
    p = check_input_file(path, what=what)
    try:
        ds = rasterio.open(p)
    except RasterioIOError as err:
        raise InputError(f"{what}: not a readable raster: {p} ({str(err).splitlines()[0]})") from err
    if ds.crs is None:
        ds.close()
        raise InputError(f"{what}: raster has no CRS: {p}; assign one (e.g. gdal_edit.py -a_srs EPSG:XXXX)")
    return ds


def iter_windows(height: int, width: int, block: int) -> Iterator[Window]:
    """Windows of at most ``block`` x ``block`` px covering a raster, row by row."""
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def padded_window(window: Window, halo: int, height: int, width: int) -> tuple[Window, tuple[slice, slice]]:
    """Grow ``window`` by ``halo`` px on each side (clipped to the raster).

    Returns the grown window and the slices that cut the original window back out of
    an array read with the grown one.
    """
    row0 = max(0, int(window.row_off) - halo)
    col0 = max(0, int(window.col_off) - halo)
    row1 = min(height, int(window.row_off + window.height) + halo)
    col1 = min(width, int(window.col_off + window.width) + halo)
    inner = (
        slice(int(window.row_off) - row0, int(window.row_off) - row0 + int(window.height)),
        slice(int(window.col_off) - col0, int(window.col_off) - col0 + int(window.width)),
    )
    return Window(col0, row0, col1 - col0, row1 - row0), inner


def utm_crs_for_lonlat(lon: float, lat: float) -> CRS:
    """The WGS84 UTM zone CRS (EPSG:326xx north, 327xx south) containing a lon/lat point."""
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise InputError(f"cannot choose a UTM zone for lon={lon}, lat={lat}: outside -180..180 / -90..90")
    zone = min(60, math.floor((lon + 180.0) / 6.0) + 1)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def valid_pixels(a: np.ndarray, nodata: float | None) -> np.ndarray:
    """True where ``a`` holds data: finite (for floats) and not ``nodata``."""
    valid = np.isfinite(a) if a.dtype.kind == "f" else np.ones(a.shape, dtype=bool)
    if nodata is not None and not math.isnan(nodata):
        valid &= a != nodata
    return valid
