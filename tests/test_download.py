"""USGS 3DEP tiles: names from a bbox, URLs, and the downloader against a local HTTP server.

The server (tests/usgs_server.py: 127.0.0.1, a free port, a thread of the test process) serves
generated GeoTIFF tiles laid out like the USGS staged products and a TNM-style JSON index, and plays
scripted faults: 404, 500, a dropped connection, a stalled transfer, an HTML page served with status
200, a redirect elsewhere. No test reaches the internet.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.raster import NODATA_FLOAT
from cinderseg.terrain.download import (
    DownloadSettings,
    checksum_path,
    download_tile,
    parse_tile,
    product,
    staged_url,
    tile_bounds,
    tile_name,
    tile_paths,
    tiles_for_bbox,
    tnm_query_url,
)
from cinderseg.terrain.fetch import download_file, url_allowed
from cinderseg.workflow.config import load_config, load_schema, validate_config
from tests.usgs_server import (
    DATASET,
    NODATA_3DEP,
    PX,
    TILES,
    VOID,
    ServerState,
    elevation,
    leftovers,
    served_bytes,
    tile_path,
)
from tests.workflow_helpers import REPO, snakemake, write_config

# --- names and URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bbox", "expected"),
    [
        ([-155.62, 19.70, -155.30, 19.95], ["n20w156"]),  # Mauna Kea
        ([-156.0, 19.0, -155.0, 20.0], ["n20w156"]),  # edges on whole degrees pull in no neighbour
        ([-155.1, 19.9, -154.9, 20.1], ["n21w156", "n21w155", "n20w156", "n20w155"]),
        ([170.2, -14.8, 170.4, -14.2], ["s14e170"]),
        ([-0.5, -0.5, 0.5, 0.5], ["n01w001", "n01e000", "n00w001", "n00e000"]),
    ],
)
def test_tiles_for_bbox_are_named_by_their_north_west_corner(bbox: list[float], expected: list[str]) -> None:
    assert tiles_for_bbox(bbox) == expected
    for tile in expected:
        west, south, east, north = tile_bounds(tile)
        assert east - west == 1 and north - south == 1
        assert tile_name(*parse_tile(tile)) == tile
        # every tile overlaps the bbox
        assert west < bbox[2] and east > bbox[0] and south < bbox[3] and north > bbox[1]
    assert tile_bounds("n20w156") == (-156.0, 19.0, -155.0, 20.0)


@pytest.mark.parametrize("bad", ["n20w15", "N20W156", "x20w156", "n95w156", "n20w156.tif"])
def test_bad_tile_names_are_refused(bad: str) -> None:
    with pytest.raises(InputError, match="not a 3DEP tile name"):
        parse_tile(bad)


def test_urls_and_cache_paths() -> None:
    assert staged_url("n20w156", product("1/3"), "https://prd-tnm.s3.amazonaws.com/") == (
        "https://prd-tnm.s3.amazonaws.com/StagedProducts/Elevation/13/TIFF/current/n20w156/USGS_13_n20w156.tif"
    )
    assert staged_url("n20w156", product("1"), "https://mirror.org/usgs") == (
        "https://mirror.org/usgs/StagedProducts/Elevation/1/TIFF/current/n20w156/USGS_1_n20w156.tif"
    )
    query = urlsplit(tnm_query_url("n20w156", product("1/3"), "https://tnm.example/api/v1"))
    params = parse_qs(query.query)
    assert query.path == "/api/v1/products"
    assert params["datasets"] == ["National Elevation Dataset (NED) 1/3 arc-second"]
    assert params["prodFormats"] == ["GeoTIFF"]
    west, south, east, north = (float(v) for v in params["bbox"][0].split(","))
    assert -156 < west < east < -155 and 19 < south < north < 20  # inside the tile: no neighbours listed
    assert tile_paths([-155.1, 19.5, -154.9, 19.6], "1") == [
        "resources/dem/tiles/USGS_1_n20w156.tif",
        "resources/dem/tiles/USGS_1_n20w155.tif",
    ]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://prd-tnm.s3.amazonaws.com/StagedProducts/Elevation/13/x.tif", True),
        ("http://prd-tnm.s3.amazonaws.com/StagedProducts/x.tif", False),  # other scheme
        ("https://prd-tnm.s3.amazonaws.com.evil.example/x.tif", False),
        ("https://user@prd-tnm.s3.amazonaws.com/x.tif", False),
        ("file:///etc/passwd", False),
        ("ftp://mirror.org/usgs/x.tif", False),
        ("https://mirror.org/usgs/StagedProducts/x.tif", True),
        ("https://mirror.org/usgsx/StagedProducts/x.tif", False),
        ("https://mirror.org/usgs/../secret/x.tif", False),
    ],
)
def test_only_urls_under_the_configured_bases_are_allowed(url: str, allowed: bool) -> None:
    assert url_allowed(url, ["https://prd-tnm.s3.amazonaws.com", "https://mirror.org/usgs/"]) is allowed


# --- config ------------------------------------------------------------------------------------------


def test_download_settings_defaults_match_the_schema() -> None:
    schema = load_schema()["properties"]["download"]["properties"]
    defaults = DownloadSettings()
    assert {name: getattr(defaults, name) for name in schema} == {
        name: sub["default"] for name, sub in schema.items()
    }
    assert DownloadSettings.from_config(
        validate_config({"regions": {"a": {"source": "synthetic"}}})["download"]
    ) == (defaults)


def test_usgs3dep_region_defaults() -> None:
    cfg = validate_config(
        {
            "regions": {
                "mk": {"source": "usgs3dep", "bbox": [-155.6, 19.7, -155.3, 19.9]},
                "one": {"source": "usgs3dep", "bbox": [-155.6, 19.7, -155.3, 19.9], "product": 1},
                "f": {"source": "file", "dem": "x.tif"},
            }
        }
    )
    assert cfg["regions"]["mk"]["product"] == "1/3"
    assert cfg["regions"]["one"]["product"] == "1"  # YAML `product: 1` is an integer
    assert "product" not in cfg["regions"]["f"]  # so the params of other regions do not change
    assert cfg["download"]["method"] == "api"


@pytest.mark.parametrize(
    ("region", "download", "expected"),
    [
        ({"source": "usgs3dep"}, {}, "regions.a.bbox: required for source 'usgs3dep'"),
        ({"source": "usgs3dep", "bbox": [-156, 19, -155, 20], "dem": "x.tif"}, {}, "regions.a.dem: not used"),
        ({"source": "file", "dem": "x.tif", "product": "1"}, {}, "regions.a.product: only used with source"),
        ({"source": "usgs3dep", "bbox": [-156, 19, -155, 20], "product": "1/9"}, {}, "'1/9' is not one of"),
        ({"source": "usgs3dep", "bbox": [-160, 18, -150, 23]}, {}, "needs 50 tiles of 1 x 1 degree"),
        (
            {"source": "usgs3dep", "bbox": [-156, 19, -154, 20]},
            {"max_tiles": 1},
            "more than download.max_tiles",
        ),
        ({"source": "usgs3dep", "bbox": [-156, 19, -155, 20]}, {"method": "ftp"}, "download.method: 'ftp'"),
        (
            {"source": "usgs3dep", "bbox": [-156, 19, -155, 20]},
            {"staged_url": "file:///x"},
            "download.staged_url",
        ),
    ],
)
def test_usgs3dep_config_errors(region: dict, download: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"regions": {"a": region}, "download": download}, source="c.yaml")
    assert str(info.value).startswith("c.yaml: ") and expected in str(info.value)


def test_hawaii_config_shares_one_tile_between_its_volcanoes() -> None:
    cfg = load_config(REPO / "config" / "hawaii.yaml")
    regions = cfg["regions"]
    assert {r["source"] for r in regions.values()} == {"usgs3dep"}
    assert regions["mauna_kea"]["role"] == "train" and regions["hualalai"]["role"] == "predict"
    assert (REPO / regions["mauna_kea"]["labels"]).is_file(), "trains on the example's labels, no setup"
    for region in regions.values():
        assert region["product"] == "1/3" and region["resolution_m"] == 10
        assert tile_paths(region["bbox"], region["product"]) == ["resources/dem/tiles/USGS_13_n20w156.tif"]
    assert cfg["tiling"]["size"] == 224 and cfg["train"]["epochs"] == 100


# --- the downloader ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["api", "staged"])
def test_normal_run_and_a_second_run_downloads_nothing(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path, method: str
) -> None:
    dest = tmp_path / "tiles" / "USGS_13_n20w156.tif"
    assert download_tile("n20w156", "1/3", dest, settings(method=method)) == dest
    assert dest.read_bytes() == served_bytes(server, "n20w156")
    assert server.gets(tile_path("n20w156")) == [None]  # one request, for the current version
    assert leftovers(dest.parent) == []
    if method == "api":
        (query,) = server.api_queries
        assert query["datasets"] == [DATASET] and query["prodFormats"] == ["GeoTIFF"]
    else:
        assert server.api_queries == []
    with rasterio.open(dest) as ds:
        assert ds.nodata == NODATA_3DEP and ds.crs.to_epsg() == 4269
    n_requests = len(server.requests)
    download_tile("n20w156", "1/3", dest, settings(method=method))
    assert len(server.requests) == n_requests


def test_404_names_the_tile_and_url_without_retrying(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    dest = tmp_path / "USGS_13_n21w156.tif"
    with pytest.raises(InputError) as info:
        download_tile("n21w156", "1/3", dest, settings(method="staged"))
    message = str(info.value)
    assert "\n" not in message
    assert "USGS 3DEP 1/3 arc-second tile n21w156: not found (HTTP 404)" in message
    assert tile_path("n21w156") in message and "bbox" in message
    assert server.gets(tile_path("n21w156")) == [None]
    assert not dest.exists() and leftovers(tmp_path) == []


def test_a_tile_missing_from_the_api_index_falls_back_to_the_staged_url(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=r"tile n21w156: not found \(HTTP 404\) at http://127\.0\.0\.1"):
        download_tile("n21w156", "1/3", tmp_path / "t.tif", settings())
    assert len(server.api_queries) == 1 and server.gets(tile_path("n21w156")) == [None]


def test_server_errors_are_retried(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    server.faults[tile_path("n20w156")] = ["500", "503"]
    dest = tmp_path / "t.tif"
    download_tile("n20w156", "1/3", dest, settings(method="staged"))
    assert len(server.gets(tile_path("n20w156"))) == 3
    assert dest.read_bytes() == served_bytes(server, "n20w156")


def test_exhausted_retries_name_the_tile_url_and_last_error(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    server.faults[tile_path("n20w156")] = ["500"] * 10
    with pytest.raises(InputError) as info:
        download_tile("n20w156", "1/3", tmp_path / "t.tif", settings(method="staged", retries=2))
    message = str(info.value)
    assert "tile n20w156: download from http://127.0.0.1" in message and tile_path("n20w156") in message
    assert "failed after 3 attempts (HTTP 500" in message
    assert len(server.gets(tile_path("n20w156"))) == 3
    assert not (tmp_path / "t.tif").exists()


def test_failing_api_falls_back_to_the_staged_url(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    server.faults["/api/v1/products"] = ["500"] * 10
    dest = tmp_path / "t.tif"
    download_tile("n20w156", "1/3", dest, settings(retries=1))
    assert dest.read_bytes() == served_bytes(server, "n20w156")
    assert len(server.gets("/api/v1/products")) == 2


def test_dropped_connection_resumes_with_a_range_request(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    data = served_bytes(server, "n20w156")
    server.faults[tile_path("n20w156")] = ["drop"]
    dest = tmp_path / "t.tif"
    download_tile("n20w156", "1/3", dest, settings(method="staged"))
    assert server.gets(tile_path("n20w156")) == [None, f"bytes={len(data) // 2}-"]
    assert dest.read_bytes() == data
    assert leftovers(tmp_path) == []


def test_dropped_connection_never_leaves_a_cached_file_and_the_next_run_resumes(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    data = served_bytes(server, "n20w156")
    server.faults[tile_path("n20w156")] = ["drop"]
    dest = tmp_path / "t.tif"
    with pytest.raises(
        InputError, match=rf"failed after 1 attempt \(connection closed after {len(data) // 2} of"
    ):
        download_tile("n20w156", "1/3", dest, settings(method="staged", retries=0))
    assert not dest.exists()
    assert (tmp_path / ".t.tif.part").stat().st_size == len(data) // 2  # kept for the next run
    download_tile("n20w156", "1/3", dest, settings(method="staged", retries=0))
    assert server.gets(tile_path("n20w156"))[-1] == f"bytes={len(data) // 2}-"
    assert dest.read_bytes() == data and leftovers(tmp_path) == []


def test_a_server_ignoring_range_restarts_the_file(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    data = served_bytes(server, "n20w156")
    server.faults[tile_path("n20w156")] = ["drop", "norange"]
    dest = tmp_path / "t.tif"
    download_tile("n20w156", "1/3", dest, settings(method="staged"))
    assert len(server.gets(tile_path("n20w156"))) == 2 and dest.read_bytes() == data


def test_a_partial_file_of_another_url_is_not_resumed(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    (tmp_path / ".t.tif.part").write_bytes(b"x" * 5000)
    (tmp_path / ".t.tif.part.json").write_text(
        json.dumps({"url": "http://127.0.0.1:1/other.tif", "total": 9})
    )
    dest = tmp_path / "t.tif"
    download_tile("n20w156", "1/3", dest, settings(method="staged"))
    assert server.gets(tile_path("n20w156")) == [None]
    assert dest.read_bytes() == served_bytes(server, "n20w156")


def test_truncated_transfer_without_content_length_is_rejected(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    server.faults[tile_path("n20w156")] = ["nolength_drop"]
    dest = tmp_path / "t.tif"
    with pytest.raises(InputError, match=r"tile n20w156: .* is not a readable GeoTIFF"):
        download_tile("n20w156", "1/3", dest, settings(method="staged"))
    assert not dest.exists() and leftovers(tmp_path) == []


def test_stalled_server_times_out_with_a_clear_error(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    server.faults[tile_path("n20w156")] = ["stall", "stall"]
    started = time.monotonic()
    with pytest.raises(InputError) as info:
        download_tile(
            "n20w156", "1/3", tmp_path / "t.tif", settings(method="staged", retries=1, timeout_s=0.3)
        )
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "tile n20w156" in message and tile_path("n20w156") in message
    assert "failed after 2 attempts (timed out: no data for 0.3 s)" in message
    assert not (tmp_path / "t.tif").exists()


def test_html_error_page_served_with_200_is_rejected(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    server.faults[tile_path("n20w156")] = ["html"]
    dest = tmp_path / "t.tif"
    with pytest.raises(InputError) as info:
        download_tile("n20w156", "1/3", dest, settings(method="staged"))
    assert "tile n20w156" in str(info.value) and "sent a web page, not a GeoTIFF" in str(info.value)
    assert "503 Service Unavailable" in str(info.value)
    assert not dest.exists() and leftovers(tmp_path) == []


def test_a_file_of_another_place_is_rejected(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    server.faults[tile_path("n20w156")] = ["wrongtile"]
    with pytest.raises(InputError, match=r"tile n20w156: .* covers lon -155\.012\.\.-153\.988"):
        download_tile("n20w156", "1/3", tmp_path / "t.tif", settings(method="staged"))
    assert not (tmp_path / "t.tif").exists()


def test_a_503_with_retry_after_waits_as_the_server_asks(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    server.faults[tile_path("n20w156")] = ["retry-after:1"]
    dest = tmp_path / "t.tif"
    started = time.monotonic()
    download_tile("n20w156", "1/3", dest, settings(method="staged", backoff_s=0.01))
    assert time.monotonic() - started >= 1.0  # Retry-After wins over backoff_s
    assert len(server.gets(tile_path("n20w156"))) == 2
    assert dest.read_bytes() == served_bytes(server, "n20w156")


def test_a_transfer_whose_md5_differs_from_the_etag_is_downloaded_again(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    server.faults[tile_path("n20w156")] = ["badmd5"]
    dest = tmp_path / "t.tif"
    download_tile("n20w156", "1/3", dest, settings(method="staged"))
    assert server.gets(tile_path("n20w156")) == [None, None]  # the corrupt file was not resumed
    assert dest.read_bytes() == served_bytes(server, "n20w156") and leftovers(tmp_path) == []

    server.faults[tile_path("n20w156")] = ["badmd5"] * 3
    with pytest.raises(InputError, match=r"failed after 2 attempts \(MD5 differs from the server's"):
        download_tile("n20w156", "1/3", tmp_path / "u.tif", settings(method="staged", retries=1))
    assert not (tmp_path / "u.tif").exists() and leftovers(tmp_path) == []


def test_the_sha256_of_a_tile_is_recorded_and_a_corrupt_cached_tile_is_downloaded_again(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    data = served_bytes(server, "n20w156")
    dest = tmp_path / "USGS_13_n20w156.tif"
    download_tile("n20w156", "1/3", dest, settings(method="staged"))
    sidecar = checksum_path(dest)
    assert sidecar.name == "USGS_13_n20w156.tif.sha256"
    assert sidecar.read_text() == f"{hashlib.sha256(data).hexdigest()}  USGS_13_n20w156.tif\n"

    dest.write_bytes(data[: len(data) // 2])  # truncated in the cache
    download_tile("n20w156", "1/3", dest, settings(method="staged"))
    assert server.gets(tile_path("n20w156")) == [None, None]
    assert dest.read_bytes() == data and sidecar.read_text().startswith(hashlib.sha256(data).hexdigest())


def test_a_cached_tile_without_checksum_is_checked_once_and_recorded(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    data = served_bytes(server, "n20w156")
    dest = tmp_path / "USGS_13_n20w156.tif"
    dest.write_bytes(data)  # a tile cached before checksums were recorded, or copied in
    download_tile("n20w156", "1/3", dest, settings(method="staged"))
    assert server.requests == []
    assert checksum_path(dest).read_text().split()[0] == hashlib.sha256(data).hexdigest()

    checksum_path(dest).unlink()
    dest.write_bytes(b"<html>not a tile</html>")
    download_tile("n20w156", "1/3", dest, settings(method="staged"))
    assert server.gets(tile_path("n20w156")) == [None] and dest.read_bytes() == data


def test_urls_outside_the_configured_bases_are_refused(
    server: ServerState, settings: Callable[..., DownloadSettings], tmp_path: Path
) -> None:
    server.faults[tile_path("n20w156")] = ["redirect"]
    with pytest.raises(
        InputError, match=r"redirects to http://example\.invalid/elsewhere\.tif, which is not under"
    ):
        download_tile("n20w156", "1/3", tmp_path / "t.tif", settings(method="staged"))
    with pytest.raises(InputError, match=r"refusing https://example\.invalid/x\.tif: not under"):
        download_file("https://example.invalid/x.tif", tmp_path / "x.part", settings=settings(), what="x")
    # an API answer pointing elsewhere
    original = list(server.index)
    try:
        server.index[:] = [dict(item, downloadURL="https://elsewhere.example" + tile_path("n20w156"))
                           for item in original]  # fmt: skip
        with pytest.raises(
            InputError, match=r"the TNM API points to https://elsewhere\.example/.*download.staged_url"
        ):
            download_tile("n20w156", "1/3", tmp_path / "t.tif", settings())
    finally:
        server.index[:] = original
    assert not (tmp_path / "t.tif").exists()


# --- through the workflow ----------------------------------------------------------------------------


def dry_run_jobs(work: Path, configfile: str, *targets: str) -> str:
    proc = snakemake(work, *targets, "--dry-run", "--configfile", configfile)
    return proc.stdout + proc.stderr


@pytest.mark.workflow
def test_workflow_downloads_each_tile_once_and_mosaics_two_tiles_without_a_seam(
    server: ServerState, served: tuple[ServerState, str], tmp_path: Path
) -> None:
    _, base = served
    download = {
        "api_url": f"{base}/api/v1",
        "staged_url": base,
        "timeout_s": 5,
        "retries": 1,
        "backoff_s": 0.01,
    }
    bbox = [-155.08, 19.50, -154.92, 19.58]  # across lon -155: tiles n20w156 and n20w155
    region = {"source": "usgs3dep", "bbox": bbox, "resolution_m": 50, "role": "predict"}
    cfg = write_config(tmp_path, "c.yaml", {"regions": {"seam": region}, "download": download})
    snakemake(tmp_path, "results/dem/seam.tif", "--configfile", cfg)

    for tile in TILES:  # each tile fetched once, the current version, byte for byte
        assert server.gets(tile_path(tile)) == [None]
        assert (tmp_path / f"resources/dem/tiles/USGS_13_{tile}.tif").read_bytes() == served_bytes(
            server, tile
        )
    assert (tmp_path / "results/logs/download/USGS_13_n20w155.log").read_text().count("checked") == 1
    assert leftovers(tmp_path / "resources/dem/tiles") == []

    with rasterio.open(tmp_path / "results/dem/seam.tif") as ds:
        z = ds.read(1)
        rows, cols = np.mgrid[0 : ds.height, 0 : ds.width]
        xs, ys = ds.xy(rows.ravel(), cols.ravel())
        lon, lat = (np.asarray(v).reshape(z.shape) for v in warp_transform(ds.crs, "EPSG:4269", xs, ys))
        assert ds.crs.to_epsg() == 32605 and ds.res == (50.0, 50.0)
    west, south, east, north = VOID
    m = 2 * PX  # within the void by more than a source pixel: nothing to interpolate from
    in_void = (lon > west + m) & (lon < east - m) & (lat > south + m) & (lat < north - m)
    near_void = (lon > west - 0.01) & (lon < east + 0.01) & (lat > south - 0.01) & (lat < north + 0.01)
    valid = z != NODATA_FLOAT
    # 3DEP nodata (-999999) became nodata; no trace of it in the valid elevations
    assert in_void.sum() > 100 and not valid[in_void].any() and valid[~near_void].all()
    lowest, highest = (
        elevation(np.array(bbox[0]), np.array(bbox[1])),
        elevation(np.array(bbox[2]), np.array(bbox[3])),
    )
    assert lowest - 50 < z[valid].min() < lowest + 50 and highest - 50 < z[valid].max() < highest + 50
    # the elevations are the terrain's everywhere, across the seam at lon -155 too
    error = np.abs(z - elevation(lon, lat))[valid & ~near_void]
    assert error.max() < 0.5
    assert (lon[0] < -155).any() and (lon[0] > -155).any()
    row = z[-5]  # a row clear of the void, crossing the seam: a constant slope, no step
    assert (row != NODATA_FLOAT).all()
    assert np.abs(np.diff(row, 2)).max() < 0.05

    # a second run plans nothing; a new region on a cached tile plans its dem but no download
    assert "Nothing to be done" in dry_run_jobs(tmp_path, cfg, "results/dem/seam.tif")
    region2 = {"source": "usgs3dep", "bbox": [-155.5, 19.5, -155.4, 19.6], "resolution_m": 50}
    cfg2 = write_config(
        tmp_path, "c2.yaml", {"regions": {"seam": region, "other": region2}, "download": download}
    )
    plan = dry_run_jobs(tmp_path, cfg2, "results/dem/seam.tif", "results/dem/other.tif")
    assert "rule dem:" in plan and "region=other" in plan
    assert "download_tile" not in plan and "region=seam" not in plan
    assert len(server.requests) == 2 + 2  # two API queries, two tiles: nothing more


@pytest.mark.workflow
def test_workflow_missing_tile_is_one_line_naming_tile_and_url(
    server: ServerState, served: tuple[ServerState, str], tmp_path: Path
) -> None:
    _, base = served
    download = {"method": "staged", "staged_url": base, "retries": 0}
    region = {"source": "usgs3dep", "bbox": [-155.5, 20.1, -155.4, 20.2], "resolution_m": 50}
    cfg = write_config(tmp_path, "c.yaml", {"regions": {"north": region}, "download": download})
    proc = snakemake(tmp_path, "results/dem/north.tif", "--configfile", cfg, check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cinderseg: error:")]
    assert lines, proc.stderr[-3000:]
    assert "USGS 3DEP 1/3 arc-second tile n21w156: not found (HTTP 404)" in lines[0]
    assert f"{base}{tile_path('n21w156')}" in lines[0]
    assert not (tmp_path / "resources/dem/tiles/USGS_13_n21w156.tif").exists()
    assert not (tmp_path / "results/dem/north.tif").exists()
