"""A local HTTP server playing USGS 3DEP for the tests: generated tiles, a TNM-style index, faults.

The server (127.0.0.1, a free port, a thread of the test process) serves generated GeoTIFF tiles laid
out like the USGS staged products and a TNM-style JSON index, and plays scripted faults: 404, 500,
a dropped connection, a stalled transfer (``stall``: 1 kB, or ``slow``: half the file, then nothing
until ``release`` is set), an HTML page served with status 200, a redirect elsewhere, a 503 with a
Retry-After header (``retry-after:<seconds>``), a file whose bytes differ from its ETag's MD5
(``badmd5``). The fixtures
``served``, ``server`` and ``settings`` are registered for every test module by ``conftest.py``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from cinderseg.terrain.download import PRODUCTS, DownloadSettings, tile_bounds

PX = 1 / 500  # degrees per pixel of the generated tiles (real 1/3 arc-second tiles: 1/10800)
OVERLAP_PX = 6  # 3DEP tiles reach 6 pixels beyond their 1 x 1 degree square
NODATA_3DEP = -999999.0
TILES = ("n20w156", "n20w155")
VOID = (-154.99, 19.53, -154.96, 19.56)  # a void (nodata) in n20w155: west, south, east, north
DATASET = PRODUCTS["1/3"].dataset


def elevation(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """The terrain of the generated tiles: a plane rising east and north (metres)."""
    return 1000.0 + 3000.0 * (lon + 156.0) + 2000.0 * (lat - 19.0)


def write_3dep_tile(path: Path, tile: str) -> None:
    """A 3DEP-like tile: NAD83 lon/lat, float32, nodata -999999, 6 px overlap, tiled and compressed."""
    west, _, _, north = tile_bounds(tile)
    n = round(1 / PX) + 2 * OVERLAP_PX
    transform = from_origin(west - OVERLAP_PX * PX, north + OVERLAP_PX * PX, PX, PX)
    cols, rows = np.meshgrid(np.arange(n), np.arange(n))
    lon = transform.c + (cols + 0.5) * PX
    lat = transform.f - (rows + 0.5) * PX
    z = elevation(lon, lat).astype("float32")
    w, s, e, nn = VOID
    z[(lon > w) & (lon < e) & (lat > s) & (lat < nn)] = NODATA_3DEP
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32", crs="EPSG:4269",
        transform=transform, nodata=NODATA_3DEP, tiled=True, blockxsize=128, blockysize=128,
        compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(z, 1)


# --- the local server --------------------------------------------------------------------------------


@dataclass
class ServerState:
    """What the server serves and how it misbehaves; faults[path] is a queue of faults, one per request."""

    root: Path
    index: list[dict] = field(default_factory=list)
    faults: dict[str, list[str]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    api_queries: list[dict[str, list[str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the requests for ``path`` so far."""
        with self.lock:
            return [rng for p, rng in self.requests if p == path]


HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head><body>Later</body></html>"
)


class Handler(BaseHTTPRequestHandler):
    """Serves ``state.root`` with Range support, a TNM-style /api/v1/products, and scripted faults."""

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    @property
    def state(self) -> ServerState:
        return self.server.state  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        with self.state.lock:
            self.state.requests.append((url.path, self.headers.get("Range")))
            queue = self.state.faults.get(url.path)
            fault = queue.pop(0) if queue else "ok"
        if fault.isdigit():
            self.send_error(int(fault))
        elif fault.startswith("retry-after:"):
            self.send_body(b"busy", "text/plain", 503, {"Retry-After": fault.split(":", 1)[1]})
        elif fault == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://example.invalid/elsewhere.tif")
            self.end_headers()
        elif fault == "html":
            self.send_body(HTML_PAGE, "text/html")
        elif url.path == "/api/v1/products":
            self.api(parse_qs(url.query))
        else:
            self.file(url.path, fault)

    def send_body(self, body: bytes, ctype: str, status: int = 200, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def api(self, query: dict[str, list[str]]) -> None:
        with self.state.lock:
            self.state.api_queries.append(query)
        west, south, east, north = (float(v) for v in query["bbox"][0].split(","))
        items = [
            {k: v for k, v in item.items() if k != "dataset"}
            for item in self.state.index
            if item["dataset"] == query["datasets"][0]
            and item["boundingBox"]["minX"] < east
            and item["boundingBox"]["maxX"] > west
            and item["boundingBox"]["minY"] < north
            and item["boundingBox"]["maxY"] > south
        ]
        body = {"total": len(items), "items": items, "errors": [], "messages": []}
        self.send_body(json.dumps(body).encode(), "application/json")

    def file(self, path: str, fault: str) -> None:
        target = self.state.root / path.lstrip("/")
        if fault == "wrongtile":  # another tile's bytes under this name
            target = next(p for p in sorted(self.state.root.rglob("*.tif")) if p.name != target.name)
        if not target.is_file():
            self.send_error(404)
            return
        data = target.read_bytes()
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        if fault == "badmd5":  # a byte flipped on the way
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        if fault in ("drop", "stall", "nolength_drop", "slow"):
            self.send_response(200)
            self.send_header("Content-Type", "image/tiff")
            if fault != "nolength_drop":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if fault != "stall" else data[:1024])
            self.wfile.flush()
            if fault == "stall":
                self.state.release.wait(10)
            elif fault == "slow":
                self.state.release.wait(60)
            self.close_connection = True
            return
        rng = self.headers.get("Range")
        if rng and fault != "norange":
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_body(b"", "text/plain", 416, {"Content-Range": f"bytes */{len(data)}"})
                return
            headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}", "ETag": etag}
            self.send_body(data[start:], "image/tiff", 206, headers)
            return
        self.send_body(data, "image/tiff", headers={"ETag": etag, "Accept-Ranges": "bytes"})


def tile_path(tile: str, code: str = "13") -> str:
    return f"/StagedProducts/Elevation/{code}/TIFF/current/{tile}/USGS_{code}_{tile}.tif"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerState, str]]:
    """The running server and its base URL; tiles n20w156 and n20w155 (1/3 arc-second layout)."""
    root = tmp_path_factory.mktemp("usgs")
    state = ServerState(root=root)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = state  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    for tile in TILES:
        write_3dep_tile(root / tile_path(tile).lstrip("/"), tile)
        west, south, east, north = tile_bounds(tile)
        box = {"minX": west - 0.001, "minY": south - 0.001, "maxX": east + 0.001, "maxY": north + 0.001}
        historical = f"{base}/StagedProducts/Elevation/13/TIFF/historical/{tile}/USGS_13_{tile}_20240101.tif"
        state.index += [  # the historical version is listed first and is newer: 'current' must still win
            {"dataset": DATASET, "title": f"USGS 1/3 Arc Second {tile} 20240101", "downloadURL": historical,
             "publicationDate": "2024-01-01", "boundingBox": box, "format": "GeoTIFF"},
            {"dataset": DATASET, "title": f"USGS 1/3 Arc Second {tile}",
             "downloadURL": base + tile_path(tile), "publicationDate": "2021-11-24", "boundingBox": box,
             "format": "GeoTIFF"},
        ]  # fmt: skip
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, base
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server(served: tuple[ServerState, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerState]:
    """The server with no faults and an empty request log (a proxy from the environment is bypassed)."""
    state, _ = served
    state.release.clear()
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    with state.lock:
        state.faults.clear()
        state.requests.clear()
        state.api_queries.clear()
    yield state


@pytest.fixture
def settings(served: tuple[ServerState, str]) -> Callable[..., DownloadSettings]:
    """Download settings pointed at the local server, with tiny timeouts and backoff."""
    _, base = served

    def make(**changes: object) -> DownloadSettings:
        values: dict = {"method": "api", "api_url": f"{base}/api/v1", "staged_url": base, "timeout_s": 2.0,
                        "retries": 2, "backoff_s": 0.01, "chunk_bytes": 4096}  # fmt: skip
        values.update(changes)
        return DownloadSettings(**values)

    return make


def served_bytes(state: ServerState, tile: str) -> bytes:
    return (state.root / tile_path(tile).lstrip("/")).read_bytes()


def leftovers(directory: Path) -> list[str]:
    """Partial files left beside the cache."""
    return sorted(p.name for p in directory.glob(".*"))
