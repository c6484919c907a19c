"""USGS 3DEP elevation tiles: tile names from a bounding box, download URLs, and a robust downloader.

3DEP's seamless DEMs (1/3 and 1 arc-second) are cut into 1 x 1 degree GeoTIFF tiles named by their
north-west corner: ``n20w156`` covers 19-20 N and 156-155 W (``s14w171`` covers 15-14 S). Each tile
is found either through the TNM Access API (``{api_url}/products``, ``items[].downloadURL``) or at the
staged-products path ``{staged_url}/StagedProducts/Elevation/13/TIFF/current/{tile}/USGS_13_{tile}.tif``.

Downloads use only the standard library (``urllib``): streamed to a partial file beside the target,
with timeouts, retries with exponential backoff, HTTP Range resume of the partial file, a size check
against Content-Length, a GDAL check (an HTML error page served with status 200 is rejected), then an
atomic rename. A partial or corrupt file never takes the target's name. Only http(s) URLs under the
configured base URLs are fetched (redirects included).
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import http.client
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.warp import transform_bounds

from cinderseg.errors import InputError, write_failure

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Where the workflow keeps downloaded tiles, shared by all regions (relative to the working directory).
TILE_CACHE = "resources/dem/tiles"
TILE_NAME = re.compile(r"^([ns])(\d{2})([ew])(\d{3})$")
USER_AGENT = "cinderseg (USGS 3DEP tile download; Python urllib)"
#: Longest wait between two attempts, whatever backoff_s and Retry-After say (seconds).
MAX_BACKOFF_S = 300.0
#: HTTP statuses worth another attempt; every other 4xx is final.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: errno values of writing the partial file that end the download at once (full disk, read-only).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
#: Largest JSON answer accepted from the TNM API (bytes).
MAX_JSON_BYTES = 20 * 1024 * 1024


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
    """The ``download`` section of the config (see schemas/config.schema.yaml); times in seconds."""

    method: str = "api"
    api_url: str = "https://tnmaccess.nationalmap.gov/api/v1"
    staged_url: str = "https://prd-tnm.s3.amazonaws.com"
    timeout_s: float = 60.0
    retries: int = 5
    backoff_s: float = 2.0
    chunk_bytes: int = 1024 * 1024
    max_tiles: int = 16

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> DownloadSettings:
        """Settings from the config's ``download`` mapping; missing keys take their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(cfg or {}).items() if k in names})

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


def url_allowed(url: str, bases: Iterable[str]) -> bool:
    """True when ``url`` is http(s) and under one of ``bases`` (same scheme, host, port, path prefix)."""
    target = urllib.parse.urlsplit(url)
    if target.scheme not in ("http", "https") or not target.netloc:
        return False
    for base in bases:
        allowed = urllib.parse.urlsplit(base)
        prefix = allowed.path.rstrip("/") + "/"
        if (
            allowed.scheme == target.scheme
            and allowed.netloc.lower() == target.netloc.lower()
            and (target.path + ("/" if not target.path.endswith("/") else "")).startswith(prefix)
            and "/../" not in f"{target.path}/"
        ):
            return True
    return False


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


class _Retryable(Exception):
    """A failure worth another attempt (server error, timeout, short transfer); ``str`` says what."""

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs under the allowed bases."""

    def __init__(self, bases: Sequence[str], what: str) -> None:
        super().__init__()
        self.bases = bases
        self.what = what

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not url_allowed(newurl, self.bases):
            raise InputError(
                f"{self.what}: {req.full_url} redirects to {newurl}, which is not under the configured "
                "download.api_url or download.staged_url"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(settings: DownloadSettings, what: str) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_CheckedRedirects(settings.bases, what))


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), if any."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return None


def _http_error(err: urllib.error.HTTPError, what: str, url: str, not_found_hint: str) -> Exception:
    """A final InputError for a 4xx answer, or a _Retryable for the transient ones."""
    if err.code in RETRY_STATUS or err.code >= 500:
        return _Retryable(f"HTTP {err.code} {err.reason}", _retry_after(err.headers))
    if err.code in (404, 410):
        return InputError(f"{what}: not found (HTTP {err.code}) at {url}{not_found_hint}")
    return InputError(f"{what}: HTTP {err.code} {err.reason} from {url}")


def _with_retries(
    func: Callable[[], T], *, what: str, url: str, settings: DownloadSettings, not_found_hint: str = ""
) -> T:
    """Call ``func()`` until it returns, retrying _Retryable and network errors with exponential backoff.

    The n-th retry waits ``backoff_s * 2**(n-1)`` seconds (or what Retry-After asks), at most
    MAX_BACKOFF_S. A 4xx answer other than 408/425/429 is final at once.
    """
    attempts = settings.retries + 1
    last = ""
    wait_hint: float | None = None
    for attempt in range(attempts):
        if attempt:
            wait = settings.backoff_s * 2 ** (attempt - 1) if wait_hint is None else wait_hint
            wait = min(MAX_BACKOFF_S, wait)
            log.warning(
                "%s: attempt %d of %d failed (%s); retrying in %.1f s", what, attempt, attempts, last, wait
            )
            time.sleep(wait)
        wait_hint = None
        try:
            return func()
        except urllib.error.HTTPError as err:
            failure = _http_error(err, what, url, not_found_hint)
            if isinstance(failure, InputError):
                raise failure from err
            last, wait_hint = str(failure), getattr(failure, "wait_s", None)
        except _Retryable as err:
            last, wait_hint = str(err), err.wait_s
        except TimeoutError:
            last = f"timed out: no data for {settings.timeout_s:g} s"
        except urllib.error.URLError as err:
            reason = err.reason
            last = (
                f"timed out: no data for {settings.timeout_s:g} s"
                if isinstance(reason, TimeoutError)
                else f"network error: {reason}"
            )
        except (OSError, http.client.HTTPException) as err:
            if getattr(err, "errno", None) in DISK_ERRNOS:  # a full disk: retrying cannot help
                raise write_failure(err) or err from err
            last = f"connection error: {type(err).__name__}: {err}".rstrip(": ")
    raise InputError(
        f"{what}: download from {url} failed after {attempts} attempt{'s' if attempts > 1 else ''} ({last}); "
        "check the network or the server, or raise download.retries / download.timeout_s"
    )


def fetch_json(url: str, *, settings: DownloadSettings, what: str) -> Any:
    """GET ``url`` and parse JSON, with the retries of :func:`download_file`; InputError when it fails."""
    if not url_allowed(url, settings.bases):
        raise InputError(f"{what}: refusing {url}: not under download.api_url or download.staged_url")
    opener = _opener(settings, what)

    def attempt() -> Any:
        request = urllib.request.Request(
            url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"}
        )
        with opener.open(request, timeout=settings.timeout_s) as resp:
            body = resp.read(MAX_JSON_BYTES + 1)
        if len(body) > MAX_JSON_BYTES:
            raise InputError(f"{what}: answer of {url} is larger than {MAX_JSON_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError as err:
            raise _Retryable(f"not JSON: {body[:60]!r}") from err

    return _with_retries(attempt, what=what, url=url, settings=settings)


def _size(n: float) -> str:
    """A byte count for people: 812 B, 31.3 kB, 402.7 MB, 1.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


class _Progress:
    """Progress of one transfer in the log: every 10 % (or 30 s when the size is unknown)."""

    def __init__(self, what: str, total: int | None, start: int) -> None:
        self.what, self.total, self.start = what, total, start
        self.t0 = self.last_t = time.monotonic()
        self.next_pct = 10 * (1 + (100 * start // total) // 10) if total else 0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.total:
            pct = 100 * done // self.total
            if pct < self.next_pct:
                return
            self.next_pct = 10 * (1 + pct // 10)
        elif now - self.last_t < 30:
            return
        self.last_t = now
        rate = (done - self.start) / max(now - self.t0, 1e-6) / 1e6
        bar = ""
        if self.total:
            filled = int(20 * done / self.total)
            bar = f"[{'#' * filled}{'.' * (20 - filled)}] {100 * done / self.total:5.1f}% "
        size = f" of {_size(self.total)}" if self.total else ""
        log.info("%s: %s%s%s, %.1f MB/s", self.what, bar, _size(done), size, rate)


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, total size or None) of a Content-Range header ``bytes a-b/total``."""
    match = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value or "")
    if not match:
        return None
    return int(match.group(1)), (None if match.group(3) == "*" else int(match.group(3)))


def _discard(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def download_file(
    url: str, part: Path, *, settings: DownloadSettings, what: str, not_found_hint: str = ""
) -> int:
    """Stream ``url`` into ``part``, resuming what ``part`` already holds; return its size in bytes.

    A sidecar ``{part}.json`` remembers the URL, size and validators (ETag, Last-Modified) of the
    transfer, so that a later call resumes with ``Range``/``If-Range`` only the same file. The size is
    checked against Content-Length (or Content-Range); a short transfer is retried from where it
    stopped. Raises InputError (one line naming ``what`` and ``url``, plus ``not_found_hint`` on a
    404) when all attempts fail.
    """
    if not url_allowed(url, settings.bases):
        raise InputError(f"{what}: refusing {url}: not under download.api_url or download.staged_url")
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    meta_path = part.with_name(part.name + ".json")
    opener = _opener(settings, what)

    def load_meta() -> dict[str, Any]:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("url") != url or not part.exists():
            _discard(part, meta_path)
            return {}
        return meta

    def attempt() -> int:
        meta = load_meta()
        have = part.stat().st_size if meta else 0
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            validator = meta.get("etag") or meta.get("last_modified")
            if validator:
                headers["If-Range"] = validator
            log.info("%s: resuming %s at byte %d", what, url, have)
        request = urllib.request.Request(url, headers=headers)
        try:
            resp = opener.open(request, timeout=settings.timeout_s)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to send, or a stale partial file
                rng = err.headers.get("Content-Range", "")
                total = int(rng.rsplit("/", 1)[-1]) if re.match(r"^\s*bytes\s+\*/\d+\s*$", rng) else None
                if total == have == meta.get("total"):
                    return have
                _discard(part, meta_path)
                raise _Retryable("range not satisfiable; starting again") from err
            raise
        with resp:
            if resp.status == 206:
                rng = _parse_content_range(resp.headers.get("Content-Range"))
                if rng is None or rng[0] != have or (meta.get("total") and rng[1] != meta["total"]):
                    _discard(part, meta_path)
                    raise _Retryable(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
                total = rng[1]
                mode = "ab"
            elif resp.status == 200:
                if have:
                    log.info("%s: the server sent the whole file; starting again", what)
                have = 0
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                mode = "wb"
                meta = {
                    "url": url,
                    "total": total,
                    "etag": resp.headers.get("ETag"),
                    "last_modified": resp.headers.get("Last-Modified"),
                }
                meta_path.write_text(json.dumps(meta))
            else:
                raise _Retryable(f"unexpected HTTP status {resp.status}")
            progress = _Progress(what, total, have)
            if have == 0:
                size = _size(total) if total else "size unknown"
                log.info("%s: downloading %s (%s)", what, url, size)
            with part.open(mode) as fh:
                while True:
                    chunk = resp.read(settings.chunk_bytes)
                    if not chunk:
                        break
                    fh.write(chunk)
                    have += len(chunk)
                    progress.update(have)
                    if total is not None and have > total:
                        _discard(part, meta_path)
                        raise _Retryable(f"server sent more than the announced {total} bytes")
        if total is not None and have != total:
            raise _Retryable(f"connection closed after {have} of {total} bytes")
        return have

    return _with_retries(attempt, what=what, url=url, settings=settings, not_found_hint=not_found_hint)


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
    if settings.method != "api":
        raise InputError(f"download.method: {settings.method!r} is not one of: api, staged")
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


def download_tile(
    tile: str, product_key: str | int, dest: str | os.PathLike[str], settings: DownloadSettings
) -> Path:
    """Download one 3DEP tile to ``dest`` (nothing to do when it exists) and return its path.

    The file is streamed to ``.{name}.part`` beside ``dest`` (kept on failure, so the next run resumes
    it), checked with GDAL, and only then renamed to ``dest``. Raises InputError naming the tile and URL.
    """
    prod = product(product_key)
    parse_tile(tile)
    dest = Path(dest)
    what = _tile_what(tile, prod)
    if dest.is_file() and dest.stat().st_size > 0:
        log.info("%s: already in the cache: %s", what, dest)
        return dest
    started = time.monotonic()
    url = resolve_tile_url(tile, prod, settings)
    part = dest.with_name(f".{dest.name}.part")
    meta = part.with_name(part.name + ".json")
    hint = (
        "; the tile may not exist (sea, or outside 3DEP coverage): shrink the region's bbox, "
        "or check download.staged_url"
    )
    size = download_file(url, part, settings=settings, what=what, not_found_hint=hint)
    try:
        check_tile_file(part, tile, what=what, url=url)
    except InputError:
        _discard(part, meta)
        raise
    os.replace(part, dest)
    _discard(meta)
    seconds = time.monotonic() - started
    log.info("%s: %s (%s in %.1f s)", what, dest, _size(size), seconds)
    return dest
