"""USGS 3DEP elevation tiles: tile names from a bounding box, download URLs, and the tile download.

3DEP's seamless DEMs (1/3 and 1 arc-second) are cut into 1 x 1 degree GeoTIFF tiles named by their
north-west corner: ``n20w156`` covers 19-20 N and 156-155 W (``s14w171`` covers 15-14 S). Each tile
is found either through the TNM Access API (``{api_url}/products``, ``items[].downloadURL``) or at the
staged-products path ``{staged_url}/StagedProducts/Elevation/13/TIFF/current/{tile}/USGS_13_{tile}.tif``.

A tile is fetched by :mod:`cinderseg.terrain.fetch` (retries, resume, size and MD5 checks) into a
partial file beside the target, checked with GDAL (web pages and truncated files are rejected), and
only then takes its name, with its SHA-256 recorded beside it (``USGS_13_n20w156.tif.sha256``). A
cached tile is used again only when it still matches that checksum.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.warp import transform_bounds

from cinderseg.core.errors import InputError
from cinderseg.core.raster import atomic_write, file_digest
from cinderseg.core.schema import section_default, validate_section
from cinderseg.terrain.fetch import discard, download_file, fetch_json, url_allowed

log = logging.getLogger(__name__)

#: Where the workflow keeps downloaded tiles, shared by all regions (relative to the working directory).
TILE_CACHE = "resources/dem/tiles"
TILE_NAME = re.compile(r"^([ns])(\d{2})([ew])(\d{3})$")
NOT_FOUND_HINT = (
    "; the tile may not exist (sea, or outside 3DEP coverage): shrink the region's bbox, "
    "or check download.staged_url"
)


@dataclass(frozen=True)
class Product:
    """A 3DEP seamless DEM product: its name in file paths and in the TNM API."""

    key: str  # as in the config: "1/3" or "1"
    code: str  # in paths and file names: "13" or "1"
    dataset: str  # the TNM API `datasets` value
    label: str  # for messages


PRODUCTS: dict[str, Product] = {
    "1/3": Product("1/3", "13", "National Elevation Dataset (NED) 1/3 arc-second", "1/3 arc-second"),
    "1": Product("1", "1", "National Elevation Dataset (NED) 1 arc-second", "1 arc-second"),
}


def product(key: str | int) -> Product:
    """The product for a config value ("1/3", "1") or a path code ("13", "1")."""
    key = str(key)
    for prod in PRODUCTS.values():
        if key in (prod.key, prod.code):
            return prod
    raise InputError(f"unknown USGS 3DEP product {key!r} (use one of: {', '.join(PRODUCTS)})")


@dataclass(frozen=True)
class DownloadSettings:
    """The config's ``download`` section (meaning of each key: the schema); times in seconds."""

    method: str = section_default("download", "method")
    api_url: str = section_default("download", "api_url")
    staged_url: str = section_default("download", "staged_url")
    timeout_s: float = section_default("download", "timeout_s")
    retries: int = section_default("download", "retries")
    backoff_s: float = section_default("download", "backoff_s")
    chunk_bytes: int = section_default("download", "chunk_bytes")
    max_tiles: int = section_default("download", "max_tiles")

    def __post_init__(self) -> None:
        validate_section("download", asdict(self))

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> DownloadSettings:
        """Settings from the config's ``download`` section; missing keys take the schema's defaults."""
        return cls(**validate_section("download", section))

    @property
    def bases(self) -> tuple[str, str]:
        """The base URLs under which fetching is allowed."""
        return (self.api_url, self.staged_url)


# --- tile names --------------------------------------------------------------------------------------


def tile_name(west: int, north: int) -> str:
    """Name of the 1 x 1 degree tile whose north-west corner is (``west``, ``north``) in whole degrees."""
    return f"{'n' if north >= 0 else 's'}{abs(north):02d}{'w' if west < 0 else 'e'}{abs(west):03d}"


def parse_tile(tile: str) -> tuple[int, int]:
    """(west, north) in whole degrees of a tile name such as ``n20w156``; InputError if malformed."""
    match = TILE_NAME.match(tile)
    if not match:
        raise InputError(f"not a 3DEP tile name: {tile!r} (expected e.g. n20w156)")
    ns, lat, ew, lon = match.groups()
    north = int(lat) * (1 if ns == "n" else -1)
    west = int(lon) * (-1 if ew == "w" else 1)
    if not (-89 <= north <= 90 and -180 <= west <= 179):
        raise InputError(f"not a 3DEP tile name: {tile!r} (corner {west}, {north} is off the globe)")
    return west, north


def tile_bounds(tile: str) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of a tile, without the few pixels of overlap 3DEP adds."""
    west, north = parse_tile(tile)
    return float(west), float(north - 1), float(west + 1), float(north)


def tiles_for_bbox(bbox: Sequence[float]) -> list[str]:
    """Names of the 1 x 1 degree tiles covering ``bbox`` [west, south, east, north] (degrees).

    Ordered north to south, then west to east. A bbox edge on a whole degree does not pull in the
    neighbouring tile. No network access.
    """
    west, south, east, north = (float(v) for v in bbox)
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise InputError(f"bbox {list(bbox)} is not [west, south, east, north] in degrees")
    lons = range(math.floor(west), math.ceil(east))
    norths = range(math.ceil(north), math.floor(south), -1)
    return [tile_name(lon, lat) for lat in norths for lon in lons]


def tile_filename(tile: str, prod: Product) -> str:
    """The USGS file name of a tile, e.g. ``USGS_13_n20w156.tif``."""
    parse_tile(tile)
    return f"USGS_{prod.code}_{tile}.tif"


def tile_paths(bbox: Sequence[float], product_key: str | int, cache: str = TILE_CACHE) -> list[str]:
    """Cache paths of a region's tiles (its dem step's input), e.g. ``{cache}/USGS_13_n20w156.tif``."""
    prod = product(product_key)
    return [f"{cache}/{tile_filename(t, prod)}" for t in tiles_for_bbox(bbox)]


def checksum_path(tile_path: str | os.PathLike[str]) -> Path:
    """The SHA-256 sidecar of a cached tile, e.g. ``USGS_13_n20w156.tif.sha256`` (as sha256sum writes)."""
    path = Path(tile_path)
    return path.with_name(path.name + ".sha256")


# --- URLs --------------------------------------------------------------------------------------------


def staged_url(tile: str, prod: Product, base: str) -> str:
    """Staged-products URL of a tile (the 'current' version), under ``base``."""
    root = f"{base.rstrip('/')}/StagedProducts/Elevation/{prod.code}/TIFF/current"
    return f"{root}/{tile}/{tile_filename(tile, prod)}"


def tnm_query_url(tile: str, prod: Product, api_url: str) -> str:
    """TNM Access API query for the GeoTIFFs of ``prod`` around the centre of ``tile``.

    The query box is the middle half of the tile, so that neighbouring tiles, which overlap it by a
    few pixels, are not listed.
    """
    west, south, east, north = tile_bounds(tile)
    cx, cy = (west + east) / 2, (south + north) / 2
    params = {
        "datasets": prod.dataset,
        "bbox": f"{cx - 0.25:g},{cy - 0.25:g},{cx + 0.25:g},{cy + 0.25:g}",
        "prodFormats": "GeoTIFF",
        "outputFormat": "JSON",
        "max": "50",
    }
    return f"{api_url.rstrip('/')}/products?{urllib.parse.urlencode(params)}"


def choose_tnm_item(
    items: Sequence[Any], tile: str, prod: Product, bases: Iterable[str]
) -> tuple[str | None, list[str]]:
    """The best download URL for ``tile`` among TNM API ``items``, and the URLs refused as off-base.

    An item matches when its file is ``USGS_{code}_{tile}.tif`` or ``USGS_{code}_{tile}_{date}.tif``;
    the 'current' version wins, then the latest publication date.
    """
    stem = f"USGS_{prod.code}_{tile}"
    ranked: list[tuple[tuple[bool, str], str]] = []
    refused: list[str] = []
    for item in items:
        url = item.get("downloadURL") if isinstance(item, Mapping) else None
        if not isinstance(url, str):
            continue
        name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
        if not (name.lower().endswith(".tif") and (name[:-4] == stem or name.startswith(stem + "_"))):
            continue
        if not url_allowed(url, bases):
            refused.append(url)
            continue
        date = str(item.get("publicationDate") or item.get("lastUpdated") or "")
        ranked.append((("/current/" in url, date), url))
    best = max(ranked)[1] if ranked else None
    return best, refused


# --- HTTP --------------------------------------------------------------------------------------------


# --- tiles -------------------------------------------------------------------------------------------


def _tile_what(tile: str, prod: Product) -> str:
    return f"USGS 3DEP {prod.label} tile {tile}"


def resolve_tile_url(tile: str, prod: Product, settings: DownloadSettings) -> str:
    """The download URL of a tile: from the TNM Access API (method 'api') or the staged-products pattern.

    With method 'api', an unreachable or failing API falls back to the staged-products URL (with a
    warning), and so does an answer that lists no file for the tile.
    """
    what = _tile_what(tile, prod)
    fallback = staged_url(tile, prod, settings.staged_url)
    if settings.method == "staged":
        return fallback
    query = tnm_query_url(tile, prod, settings.api_url)
    try:
        answer = fetch_json(query, settings=settings, what=f"{what} (TNM API)")
    except InputError as err:
        log.warning("%s; using the staged-products URL %s", err, fallback)
        return fallback
    items = answer.get("items") if isinstance(answer, Mapping) else None
    url, refused = choose_tnm_item(items if isinstance(items, list) else [], tile, prod, settings.bases)
    if url is not None:
        log.info("%s: the TNM API lists %s", what, url)
        return url
    if refused:
        raise InputError(
            f"{what}: the TNM API points to {refused[0]}, which is not under download.staged_url "
            f"({settings.staged_url}); set download.staged_url to its base URL"
        )
    log.warning("%s: the TNM API lists no file for it (%s); trying %s", what, query, fallback)
    return fallback


def check_tile_file(path: Path, tile: str, *, what: str, url: str) -> None:
    """Check that ``path`` is a whole, readable GeoTIFF that covers ``tile``; InputError otherwise.

    Rejects web pages (an error page served with status 200), files GDAL cannot open, rasters without
    a CRS or not covering the tile's centre, and files whose blocks do not all decode (truncated).
    """
    with path.open("rb") as fh:
        head = fh.read(512)
    start = head.lstrip()[:15].lower()
    if start.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"{")):
        text = " ".join(head.decode("utf-8", "replace").split())[:80]
        raise InputError(
            f"{what}: {url} sent a web page, not a GeoTIFF ({text!r}); the server or a proxy is failing, "
            "retry later"
        )
    try:
        with rasterio.open(path) as ds:
            if ds.driver != "GTiff" or ds.count < 1 or ds.crs is None:
                raise InputError(
                    f"{what}: {url} is not a georeferenced GeoTIFF (driver {ds.driver}, crs {ds.crs})"
                )
            west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
            tw, ts, te, tn = tile_bounds(tile)
            cx, cy = (tw + te) / 2, (ts + tn) / 2
            if not (west <= cx <= east and south <= cy <= north):
                raise InputError(
                    f"{what}: {url} covers lon {west:.3f}..{east:.3f}, lat {south:.3f}..{north:.3f}, "
                    f"not the tile ({tw:g}..{te:g}, {ts:g}..{tn:g})"
                )
            n_valid, n_px = 0, ds.width * ds.height
            for _, window in ds.block_windows(1):
                block = ds.read(1, window=window, masked=True)
                n_valid += int(np.ma.count(block))
    except RasterioIOError as err:
        raise InputError(
            f"{what}: {url} is not a readable GeoTIFF ({str(err).splitlines()[0]}); it may be truncated"
        ) from err
    log.info("%s: checked, %.1f%% valid pixels", what, 100.0 * n_valid / max(1, n_px))


def _record_checksum(source: Path, tile_path: Path) -> None:
    """Write the SHA-256 of ``source`` into the sidecar of ``tile_path``, as ``sha256sum`` does."""
    with atomic_write(checksum_path(tile_path)) as tmp:
        tmp.write_text(f"{file_digest(source, 'sha256')}  {tile_path.name}\n")


def _cached(dest: Path, tile: str, what: str) -> bool:
    """Whether ``dest`` is a whole cached tile: its SHA-256 equals its sidecar's; one without a sidecar
    (cached by an older version, or copied in) must pass :func:`check_tile_file`, then its checksum is
    recorded. A corrupt or truncated tile is removed, to be downloaded again."""
    if not dest.is_file():
        return False
    sidecar = checksum_path(dest)
    if sidecar.is_file():
        if sidecar.read_text().split()[:1] == [file_digest(dest, "sha256")]:
            log.info("%s: already in the cache (SHA-256 checked): %s", what, dest)
            return True
        problem = f"does not match its checksum {sidecar.name}"
    else:
        try:
            check_tile_file(dest, tile, what=what, url=str(dest))
        except InputError as err:
            problem = f"is not usable ({err})"
        else:
            _record_checksum(dest, dest)
            return True
    log.warning("%s: the cached %s %s; downloading it again", what, dest, problem)
    discard(dest, sidecar)
    return False


def download_tile(
    tile: str, product_key: str | int, dest: str | os.PathLike[str], settings: DownloadSettings
) -> Path:
    """Download one 3DEP tile to ``dest`` (nothing to do when it is cached and whole) and return its path.

    The file is streamed to ``.{name}.part`` beside ``dest`` (kept on failure, so the next run resumes
    it), checked with GDAL, its SHA-256 recorded in ``{name}.sha256``, and only then renamed to
    ``dest``. Raises InputError naming the tile and URL.
    """
    prod = product(product_key)
    parse_tile(tile)
    dest = Path(dest)
    what = _tile_what(tile, prod)
    if _cached(dest, tile, what):
        return dest
    started = time.monotonic()
    url = resolve_tile_url(tile, prod, settings)
    part = dest.with_name(f".{dest.name}.part")
    record = part.with_name(part.name + ".json")
    size = download_file(url, part, settings=settings, what=what, not_found_hint=NOT_FOUND_HINT)
    try:
        check_tile_file(part, tile, what=what, url=url)
    except InputError:
        discard(part, record)
        raise
    _record_checksum(part, dest)
    os.replace(part, dest)
    discard(record)
    log.info("%s: %s (%.1f MB in %.1f s)", what, dest, size / 1e6, time.monotonic() - started)
    return dest
