"""Training tiles cut from a region's feature stack and mask, with a spatially blocked split.

Tiles are ``size`` x ``size`` px windows every ``step`` px (plus a last row/column flush with the
bottom/right edge), cut from the features GeoTIFF (float32, nodata ``NODATA_FLOAT``) and the
mask GeoTIFF (uint8 0/1, nodata ``MASK_NODATA``) of one region on the same grid.

Split (role ``train``): the raster is divided into square blocks of ``split_block_px`` px from
its upper-left corner; whole blocks are chosen for validation (deterministically from the seed,
so that about ``val_fraction`` of the stored tiles are validation tiles, preferring choices whose
validation share of tiles with cone pixels is also near ``val_fraction``). A tile is ``train``
when every block it touches is a training block, ``val`` when every block it touches is a
validation block, and is dropped otherwise: no training tile overlaps a validation tile. For
role ``test`` every kept tile is ``test``.

Storage: one ``.npz`` per region (a zip of uncompressed members ``x.npy`` (N, H, W, C) float16,
``y.npy`` (N, H, W, 1) uint8 and ``channels.npy`` (unicode names), readable by
``np.load(path, allow_pickle=False)``), written tile by tile so that memory does not grow with
the number of tiles, plus a manifest CSV with one row per stored tile (same order as in ``x``).
:func:`load_tiles` memory-maps the members straight from the zip.

A region whose tiles hold no cone pixel is not an error (it teaches the network background, e.g.
a lava field without cones): the summary of :func:`make_tiles` carries a warning instead.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import rasterio
from rasterio.windows import Window

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.grid import check_same_grid, what
from cinderseg.core.raster import MASK_NODATA, NODATA_FLOAT, atomic_write, open_raster
from cinderseg.core.schema import section_default, validate_section

log = logging.getLogger("cinderseg")

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = (
    "tile_id",
    "row_off",
    "col_off",
    "size",
    "split",
    "positive_fraction",
    "nodata_fraction",
    "minx",
    "miny",
    "maxx",
    "maxy",
)
SPLIT_TRIALS = 32
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ALIGN = 64
_ALIGN_EXTRA_ID = 0xD935  # the zip extra-field id used for alignment padding (as zipalign)
_LOCAL_HEADER = struct.Struct("<4sHHHHHLLLHH")


@dataclass(frozen=True)
class TilingSettings:
    """The config's ``tiling`` section (meaning of each key: the schema)."""

    size: int = section_default("tiling", "size")
    step: int = section_default("tiling", "step")
    max_nodata_fraction: float = section_default("tiling", "max_nodata_fraction")
    val_fraction: float = section_default("tiling", "val_fraction")
    split_block_px: int = section_default("tiling", "split_block_px")
    seed: int = section_default("tiling", "seed")

    def __post_init__(self) -> None:
        validate_section("tiling", asdict(self))
        if self.step > self.size:
            raise ConfigError(
                f"tiling.step: {self.step} is larger than tiling.size ({self.size}); tiles would leave gaps"
            )
        if self.split_block_px < self.size:
            raise ConfigError(
                f"tiling.split_block_px: {self.split_block_px} is smaller than tiling.size ({self.size})"
            )

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> TilingSettings:
        """Settings from the config's ``tiling`` section; missing keys take the schema's defaults."""
        return cls(**validate_section("tiling", section))


# --------------------------------------------------------------------------- windows and split


def _offsets(n: int, size: int, step: int) -> list[int]:
    if n < size:
        return []
    offs = list(range(0, n - size + 1, step))
    if offs[-1] != n - size:
        offs.append(n - size)
    return offs


def tile_windows(height: int, width: int, size: int, step: int) -> list[Window]:
    """Tile windows (row-major) every ``step`` px covering the raster, the last ones flush with
    the bottom/right edges; empty when the raster is smaller than one tile."""
    return [
        Window(col, row, size, size)
        for row in _offsets(height, size, step)
        for col in _offsets(width, size, step)
    ]


def windows_clear_of(windows: Sequence[Window], block: Window, gap_px: int) -> np.ndarray:
    """True for each window lying at least ``gap_px`` px away from ``block`` (pixel windows).

    The gap counts whole pixels between the two rectangles along rows or along columns (a
    window ``gap_px`` columns right of the block is clear, one overlapping the block grown by
    ``gap_px`` on every side is not); any two pixels of a clear window and the block are then at
    least ``gap_px + 1`` pixel widths apart, centre to centre.
    """
    if gap_px < 0:
        raise ValueError(f"gap_px must be >= 0, got {gap_px!r}")
    b_r0, b_c0 = int(block.row_off) - gap_px, int(block.col_off) - gap_px
    b_r1 = int(block.row_off) + int(block.height) + gap_px
    b_c1 = int(block.col_off) + int(block.width) + gap_px
    return np.array(
        [
            int(w.row_off) >= b_r1
            or int(w.row_off) + int(w.height) <= b_r0
            or int(w.col_off) >= b_c1
            or int(w.col_off) + int(w.width) <= b_c0
            for w in windows
        ],
        dtype=bool,
    )


def assign_splits(
    windows: Sequence[Window],
    height: int,
    width: int,
    *,
    block_px: int,
    val_fraction: float,
    seed: int,
    positive: Sequence[bool] | np.ndarray | None = None,
) -> list[str]:
    """``"train"``, ``"val"`` or ``"drop"`` per window, from whole validation blocks.

    Blocks are ``block_px`` squares from the raster's upper-left corner. ``SPLIT_TRIALS``
    random block orders drawn from ``seed`` are each followed greedily (validation blocks are
    added until the validation share of non-dropped windows reaches ``val_fraction``); the
    prefix with the best score wins: ``|share - val_fraction|``, plus half the same distance for
    the share among windows flagged ``positive`` (if any), plus a tenth of the dropped share.
    A window touching both kinds of block is ``"drop"``. At least one window stays ``"train"``.
    """
    n = len(windows)
    if n == 0:
        return []
    if val_fraction <= 0:
        return ["train"] * n
    r0 = np.array([int(w.row_off) for w in windows])
    c0 = np.array([int(w.col_off) for w in windows])
    r1 = r0 + np.array([int(w.height) for w in windows]) - 1
    c1 = c0 + np.array([int(w.width) for w in windows]) - 1
    br0, br1, bc0, bc1 = r0 // block_px, r1 // block_px, c0 // block_px, c1 // block_px
    nbr = max(-(-height // block_px), int(br1.max()) + 1)
    nbc = max(-(-width // block_px), int(bc1.max()) + 1)
    n_touched = (br1 - br0 + 1) * (bc1 - bc0 + 1)
    pos = np.zeros(n, dtype=bool) if positive is None else np.asarray(positive, dtype=bool)
    if pos.shape != (n,):
        raise ValueError(f"positive: expected {n} flags, one per window, got shape {pos.shape}")
    n_pos = int(pos.sum())

    def split_of(is_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.zeros((nbr + 1, nbc + 1), dtype=np.int64)
        c[1:, 1:] = is_val.cumsum(0).cumsum(1)
        n_val = c[br1 + 1, bc1 + 1] - c[br0, bc1 + 1] - c[br1 + 1, bc0] + c[br0, bc0]
        return n_val == 0, n_val == n_touched

    def score(train: np.ndarray, val: np.ndarray) -> float:
        nt, nv = int(train.sum()), int(val.sum())
        if nt == 0:
            return math.inf
        s = abs(nv / (nt + nv) - val_fraction) + 0.1 * (n - nt - nv) / n
        if n_pos:
            pt, pv = int((train & pos).sum()), int((val & pos).sum())
            s += 0.5 * abs((pv / (pt + pv) if pt + pv else 0.0) - val_fraction)
        return s

    # blocks touched by at least one window, the only ones worth choosing
    touched = np.zeros((nbr, nbc), dtype=bool)
    for a, b, c, d in zip(br0, br1, bc0, bc1, strict=True):
        touched[a : b + 1, c : d + 1] = True
    candidates = np.flatnonzero(touched)

    rng = np.random.default_rng(seed)
    empty = np.zeros((nbr, nbc), dtype=bool)
    best_score, best = score(*split_of(empty)), empty
    for _ in range(SPLIT_TRIALS):
        is_val = np.zeros((nbr, nbc), dtype=bool)
        for block in rng.permutation(candidates):
            is_val.flat[block] = True
            train, val = split_of(is_val)
            s = score(train, val)
            if s < best_score:
                best_score, best = s, is_val.copy()
            nt, nv = int(train.sum()), int(val.sum())
            if nt == 0 or nv / (nt + nv) >= val_fraction:
                break
    train, val = split_of(best)
    return ["train" if t else "val" if v else "drop" for t, v in zip(train, val, strict=True)]


# --------------------------------------------------------------------------- npz writing / reading


class _NpyMember:
    """An uncompressed ``.npy`` member of a zip written piece by piece (shape known up front)."""

    def __init__(self, zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        )
        self.expected = math.prod(shape) * dtype.itemsize
        info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = len(header.getvalue()) + self.expected
        zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT
        # pad the local header so that the member's data (and the npy data) start 64-byte aligned
        start = zf.start_dir + _LOCAL_HEADER.size + len(name.encode()) + 4 + (20 if zip64 else 0)
        pad = (-start) % _ALIGN
        info.extra = struct.pack("<HH", _ALIGN_EXTRA_ID, pad) + b"\0" * pad
        self.handle = zf.open(info, "w", force_zip64=zip64)
        self.handle.write(header.getvalue())
        self.written = 0

    def write(self, data: bytes | np.ndarray) -> None:
        if isinstance(data, np.ndarray):
            data = memoryview(np.ascontiguousarray(data)).cast("B")
        self.handle.write(data)
        self.written += len(data)

    def close(self) -> None:
        self.handle.close()
        if self.written != self.expected:
            raise RuntimeError(f"npy member: wrote {self.written} bytes, expected {self.expected}")


def _member_array(
    path: Path, info: zipfile.ZipInfo, f: BinaryIO
) -> tuple[int, tuple[int, ...], np.dtype, bool]:
    """File offset, shape, dtype and Fortran order of an uncompressed npy member of a zip."""
    f.seek(info.header_offset)
    sig, *_, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    if sig != b"PK\x03\x04":
        raise InputError(f"tiles file: corrupt zip local header of {info.filename}: {path}")
    f.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return f.tell(), shape, dtype, fortran


def load_tiles(
    tiles_path: str | os.PathLike[str], *, mmap: bool = True
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Tiles of a region: x (N, H, W, C) float16, y (N, H, W, 1) uint8 and the channel names.

    With ``mmap`` the arrays are read-only memory maps into the zip (nothing is read until
    used); otherwise they are loaded into memory.
    """
    path = Path(tiles_path)
    if not path.is_file():
        raise InputError(f"tiles file: file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
        missing = [m for m in ("x.npy", "y.npy", "channels.npy") if m not in infos]
        if missing:
            raise InputError(f"tiles file: members {', '.join(missing)} missing: {path}")
        with np.load(path, allow_pickle=False) as npz:
            channels = [str(c) for c in npz["channels"]]
            if not mmap:
                x, y = npz["x"], npz["y"]
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise InputError(f"tiles file: not a readable tiles archive: {path} ({err})") from err
    if mmap:
        arrays = []
        with path.open("rb") as f:
            for name in ("x.npy", "y.npy"):
                info = infos[name]
                if info.compress_type != zipfile.ZIP_STORED:
                    raise InputError(
                        f"tiles file: member {name} is compressed, cannot be memory-mapped: {path}"
                    )
                offset, shape, dtype, fortran = _member_array(path, info, f)
                arrays.append(
                    np.memmap(
                        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
                    )
                )
        x, y = arrays
    if x.ndim != 4 or y.shape != (*x.shape[:3], 1) or x.shape[3] != len(channels):
        raise InputError(
            f"tiles file: inconsistent shapes x {x.shape}, y {y.shape}, {len(channels)} channels: {path}"
        )
    return x, y, channels


def read_manifest(manifest_path: str | os.PathLike[str]) -> pd.DataFrame:
    """The manifest CSV of a region's tiles (one row per stored tile, in storage order)."""
    path = Path(manifest_path)
    if not path.is_file():
        raise InputError(f"tile manifest: file not found: {path}")
    try:
        df = pd.read_csv(path, dtype={"split": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"tile manifest: not a readable CSV: {path} ({err})") from err
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"tile manifest: columns {', '.join(missing)} missing: {path}")
    return df


# --------------------------------------------------------------------------- make_tiles


def _window_bounds(window: Window, transform: rasterio.Affine) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) in CRS units of a window's outer edges."""
    t = transform
    r0, c0 = float(window.row_off), float(window.col_off)
    r1, c1 = r0 + float(window.height), c0 + float(window.width)
    xs = [t.a * c + t.b * r + t.c for r in (r0, r1) for c in (c0, c1)]
    ys = [t.d * c + t.e * r + t.f for r in (r0, r1) for c in (c0, c1)]
    return min(xs), min(ys), max(xs), max(ys)


def _read_tile(
    fds: rasterio.DatasetReader, mds: rasterio.DatasetReader, window: Window
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (C, H, W) float32, mask (H, W) uint8 and nodata (H, W) bool of one window."""
    f_nodata = NODATA_FLOAT if fds.nodata is None else fds.nodata
    m_nodata = MASK_NODATA if mds.nodata is None else int(mds.nodata)
    x = fds.read(window=window)
    m = mds.read(1, window=window)
    bad = (m == m_nodata) | np.any(~np.isfinite(x) | (x == f_nodata), axis=0)
    return x, m, bad


@dataclass
class _Selection:
    """The tiles of a region: candidate windows, their nodata and cone fractions, the stored ones."""

    windows: list[Window]
    nodata_frac: np.ndarray
    positive_frac: np.ndarray
    stored: list[tuple[int, str]]  # (index into windows, split), in storage order
    n_candidates: int
    n_drop_excluded: int
    n_drop_nodata: int
    n_drop_boundary: int


def _select(
    fds: rasterio.DatasetReader,
    mds: rasterio.DatasetReader,
    settings: TilingSettings,
    role: str,
    exclude: Window | None,
    exclude_gap_px: int,
) -> _Selection:
    """Windows clear of ``exclude``, with few enough nodata pixels, split (train) or all test."""
    size, height, width = settings.size, fds.height, fds.width
    windows = tile_windows(height, width, size, settings.step)
    n_candidates = len(windows)
    if exclude is not None:
        clear = windows_clear_of(windows, exclude, exclude_gap_px)
        windows = [w for w, ok in zip(windows, clear, strict=True) if ok]
    n_px = size * size
    nodata_frac, positive_frac = np.empty(len(windows)), np.empty(len(windows))
    for i, win in enumerate(windows):
        _, m, bad = _read_tile(fds, mds, win)
        nodata_frac[i] = bad.sum() / n_px
        positive_frac[i] = ((m != 0) & ~bad).sum() / n_px
    kept = np.flatnonzero(nodata_frac <= settings.max_nodata_fraction)
    kept_windows = [windows[i] for i in kept]
    if role == "train":
        splits = assign_splits(
            kept_windows,
            height,
            width,
            block_px=settings.split_block_px,
            val_fraction=settings.val_fraction,
            seed=settings.seed,
            positive=positive_frac[kept] > 0,
        )
    else:
        splits = ["test"] * len(kept_windows)
    stored = [(int(i), s) for i, s in zip(kept, splits, strict=True) if s != "drop"]
    return _Selection(
        windows=windows,
        nodata_frac=nodata_frac,
        positive_frac=positive_frac,
        stored=stored,
        n_candidates=n_candidates,
        n_drop_excluded=n_candidates - len(windows),
        n_drop_nodata=len(windows) - len(kept),
        n_drop_boundary=len(kept_windows) - len(stored),
    )


def _write_npz(
    tiles_path: str | os.PathLike[str],
    fds: rasterio.DatasetReader,
    mds: rasterio.DatasetReader,
    sel: _Selection,
    channels: list[str],
    size: int,
) -> None:
    """Stream the stored tiles into the npz (nodata pixels 0 in x and y): x, then y, then channels."""
    n = len(sel.stored)
    with atomic_write(tiles_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        xm = _NpyMember(zf, "x.npy", np.dtype("<f2"), (n, size, size, len(channels)))
        with tempfile.TemporaryFile(dir=tmp.parent) as ybuf:
            for i, _ in sel.stored:
                x, m, bad = _read_tile(fds, mds, sel.windows[i])
                x = np.moveaxis(x, 0, -1)
                x[bad] = 0.0
                y = ((m != 0) & ~bad).astype(np.uint8)
                xm.write(x.astype("<f2"))
                ybuf.write(y.tobytes())
            xm.close()
            ybuf.seek(0)
            ym = _NpyMember(zf, "y.npy", np.dtype("u1"), (n, size, size, 1))
            while chunk := ybuf.read(1 << 22):
                ym.write(chunk)
            ym.close()
        names = io.BytesIO()
        np.lib.format.write_array(names, np.array(channels, dtype=str), allow_pickle=False)
        info = zipfile.ZipInfo("channels.npy", date_time=_ZIP_DATE)
        zf.writestr(info, names.getvalue(), compress_type=zipfile.ZIP_STORED)


def _write_manifest(
    manifest_path: str | os.PathLike[str], sel: _Selection, size: int, transform: rasterio.Affine
) -> None:
    rows = []
    for tile_id, (i, split) in enumerate(sel.stored):
        win = sel.windows[i]
        minx, miny, maxx, maxy = _window_bounds(win, transform)
        rows.append(
            {
                "tile_id": tile_id,
                "row_off": int(win.row_off),
                "col_off": int(win.col_off),
                "size": size,
                "split": split,
                "positive_fraction": float(sel.positive_frac[i]),
                "nodata_fraction": float(sel.nodata_frac[i]),
                "minx": minx,
                "miny": miny,
                "maxx": maxx,
                "maxy": maxy,
            }
        )
    with atomic_write(manifest_path) as tmp:
        pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(tmp, index=False)


def _summary(
    sel: _Selection, settings: TilingSettings, role: str, region: str, channels: list[str]
) -> dict[str, Any]:
    """Counts per split, dropped tiles, positive tiles and warnings (logged too) of a region's tiles."""
    label = f"region '{region}'" if region else "region"
    counts = {s: sum(1 for _, t in sel.stored if t == s) for s in SPLITS}
    positive = [sel.positive_frac[i] > 0 for i, _ in sel.stored]
    warnings: list[str] = []
    if not any(positive):
        warnings.append(f"{label}: no cone pixels in any tile; the region adds background only")
    if role == "train" and settings.val_fraction > 0:
        if counts["val"] == 0:
            warnings.append(
                f"{label}: no validation tiles (region too small for blocks of tiling.split_block_px="
                f"{settings.split_block_px} px)"
            )
        elif any(positive) and not any(
            p for p, (_, t) in zip(positive, sel.stored, strict=True) if t == "val"
        ):
            warnings.append(f"{label}: no cone pixels in the validation tiles")
    for w in warnings:
        log.warning(w)
    n_tv = counts["train"] + counts["val"]
    return {
        "region": region,
        "role": role,
        "tiles": len(sel.stored),
        **counts,
        "candidates": sel.n_candidates,
        "dropped_held_out": sel.n_drop_excluded,
        "dropped_nodata": sel.n_drop_nodata,
        "dropped_boundary": sel.n_drop_boundary,
        "positive_tiles": int(sum(positive)),
        "positive_pixel_fraction": float(np.mean([sel.positive_frac[i] for i, _ in sel.stored])),
        "val_share": counts["val"] / n_tv if n_tv else 0.0,
        "channels": channels,
        "warnings": warnings,
    }


def make_tiles(
    features_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    tiles_path: str | os.PathLike[str],
    manifest_path: str | os.PathLike[str],
    settings: TilingSettings,
    *,
    role: str,
    region: str = "",
    exclude: Window | None = None,
    exclude_gap_px: int = 0,
) -> dict[str, Any]:
    """Cut the tiles of a labelled region into ``tiles_path`` (.npz) and ``manifest_path`` (CSV).

    Tiles with more than ``max_nodata_fraction`` nodata pixels (mask nodata or features nodata)
    are dropped; in stored tiles nodata pixels are 0 in x and in y. Mask values other than 0 and
    nodata count as cone (1). ``exclude`` (a pixel window, e.g. the held-out block of a spatial
    cross-validation fold) and every tile within ``exclude_gap_px`` px of it are left out before
    the split (:func:`windows_clear_of`). Returns a summary: counts per split, dropped tiles,
    positive tiles and ``warnings`` (no cone pixel; no validation tile; no cone pixel in validation).
    """
    label = f"region '{region}'" if region else "region"
    if role not in ("train", "test"):
        raise ConfigError(
            f"{label}: role '{role}' has no tiles; tiles are cut for train and test regions only"
        )
    with (
        open_raster(features_path, what=what("features", region)) as fds,
        open_raster(mask_path, what=what("mask", region)) as mds,
    ):
        check_same_grid(mds, fds, what("mask", region), mask_path, features_path, ref_kind="the features")
        if fds.height < settings.size or fds.width < settings.size:
            raise InputError(
                f"{label}: DEM is {fds.width} x {fds.height} px, smaller than one tile of {settings.size} px "
                f"(tiling.size): {features_path}"
            )
        channels = [d if d else f"band{i + 1}" for i, d in enumerate(fds.descriptions)]
        sel = _select(fds, mds, settings, role, exclude, exclude_gap_px)
        if not sel.stored:
            excluded = (
                f", {sel.n_drop_excluded} lie within {exclude_gap_px} px of the held-out block"
                if exclude is not None
                else ""
            )
            raise InputError(
                f"{label}: no tile kept from {features_path}: {sel.n_drop_nodata} of {sel.n_candidates} "
                f"tiles have more than {settings.max_nodata_fraction:g} nodata (tiling.max_nodata_fraction), "
                f"{sel.n_drop_boundary} straddle the train/validation boundary{excluded}"
            )
        _write_npz(tiles_path, fds, mds, sel, channels, settings.size)
        _write_manifest(manifest_path, sel, settings.size, fds.transform)
    return _summary(sel, settings, role, region, channels)
