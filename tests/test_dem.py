"""Tests of cinderseg.terrain.dem: mosaic, reprojection, clipping, nodata and void filling, errors."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from cinderseg.core.errors import InputError
from cinderseg.core.raster import NODATA_FLOAT
from cinderseg.terrain.dem import dem_summary, fill_small_voids, prepare_dem, target_grid

UTM = "EPSG:32605"
X0, Y0 = 201_000.0, 2_199_900.0  # upper-left corner of the projected test DEMs (multiples of 300 m)


def plane(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A tilted plane in metres (bilinear resampling reproduces it exactly)."""
    return (1000.0 + 2.0 * cols + 3.0 * rows).astype(np.float32)


def write_raster(
    path: Path,
    data: np.ndarray,
    transform: rasterio.Affine,
    crs: str | None = UTM,
    nodata: float | None = None,
) -> Path:
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": str(data.dtype),
        "transform": transform,
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
    return path


def plane_dem(path: Path, shape: tuple[int, int] = (100, 100), res: float = 30.0, **kw: object) -> Path:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return write_raster(path, plane(rows, cols), from_origin(X0, Y0, res, res), **kw)


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile | {"bounds": ds.bounds, "res": ds.res}


def geographic_dem(path: Path, lon0: float, lat0: float, n: int, step: float, **kw: object) -> Path:
    """A DEM in EPSG:4326 whose elevation is a smooth function of lon/lat (m)."""
    rows, cols = np.mgrid[0:n, 0:n]
    z = (500.0 + 1000.0 * np.sin(cols * step * 20) + 800.0 * np.cos(rows * step * 15)).astype(np.float32)
    return write_raster(path, z, from_origin(lon0, lat0, step, step), crs="EPSG:4326", **kw)


# --- grid, profile ---------------------------------------------------------------------------------


def test_output_profile_and_values(tmp_path: Path) -> None:
    src = plane_dem(tmp_path / "src.tif", shape=(300, 300), res=30.0)
    out = tmp_path / "dem.tif"
    prepare_dem([src], out, resolution_m=30.0, crs=UTM, region="r1")
    data, prof = read(out)
    assert prof["dtype"] == "float32"
    assert prof["nodata"] == NODATA_FLOAT
    assert prof["crs"] == rasterio.crs.CRS.from_string(UTM)
    assert prof["tiled"] and prof["blockxsize"] == 256
    assert prof["compress"] == "deflate"
    assert prof["res"] == (30.0, 30.0)
    t = prof["transform"]
    assert t.b == 0 and t.d == 0 and t.e < 0
    assert t.c % 30.0 == 0 and t.f % 30.0 == 0
    assert data.shape == (300, 300)
    # same grid as the source: the values are the source values
    rows, cols = np.mgrid[0:300, 0:300]
    np.testing.assert_allclose(data, plane(rows, cols), atol=1e-3)
    assert not (tmp_path / ".dem.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dem.tif", "src.tif"]


def test_resampling_is_bilinear_and_grid_aligned(tmp_path: Path) -> None:
    # source at 10 m offset by 5 m from the 20 m target lattice: bilinear gives the plane exactly
    rows, cols = np.mgrid[0:120, 0:120]
    src = write_raster(tmp_path / "s.tif", plane(rows, cols), from_origin(X0 + 5.0, Y0 - 5.0, 10.0, 10.0))
    out = tmp_path / "o.tif"
    prepare_dem([src], out, resolution_m=20.0, crs=UTM)
    data, prof = read(out)
    t = prof["transform"]
    assert t.c % 20.0 == 0 and t.f % 20.0 == 0
    assert t.c <= X0 + 5.0 and t.f >= Y0 - 5.0
    valid = data != NODATA_FLOAT
    # interior pixel centres: map to source pixel coordinates and compare with the plane
    r, c = np.mgrid[0 : data.shape[0], 0 : data.shape[1]]
    x = t.c + (c + 0.5) * 20.0
    y = t.f - (r + 0.5) * 20.0
    src_col = (x - (X0 + 5.0)) / 10.0 - 0.5
    src_row = ((Y0 - 5.0) - y) / 10.0 - 0.5
    interior = valid & (src_col > 1) & (src_col < 118) & (src_row > 1) & (src_row < 118)
    assert interior.sum() > 2500
    expected = 1000.0 + 2.0 * src_col + 3.0 * src_row
    np.testing.assert_allclose(data[interior], expected[interior], atol=0.05)


def test_default_crs_is_utm_of_centre_and_geographic_source_works(tmp_path: Path) -> None:
    # 0.2 deg x 0.2 deg around Mauna Kea: ~21.0 km wide, ~22.1 km tall
    src = geographic_dem(tmp_path / "geo.tif", -155.6, 19.9, n=200, step=0.001)
    out = tmp_path / "dem.tif"
    prepare_dem([src], out, resolution_m=100.0, region="mk")
    data, prof = read(out)
    assert prof["crs"].to_epsg() == 32605
    width_km = 0.2 * 111.32 * math.cos(math.radians(19.8))
    assert abs(data.shape[1] - width_km * 10) <= 0.05 * width_km * 10
    assert abs(data.shape[0] - 0.2 * 110.6 * 10) <= 0.05 * 0.2 * 110.6 * 10
    valid = data != NODATA_FLOAT
    assert valid.mean() > 0.9
    assert data[valid].min() > 500 - 1000 - 800 - 1 and data[valid].max() < 500 + 1000 + 800 + 1
    # southern hemisphere picks a 327xx zone
    src_s = geographic_dem(tmp_path / "south.tif", 30.1, -10.0, n=50, step=0.002)
    prepare_dem([src_s], tmp_path / "s.tif", resolution_m=100.0)
    assert read(tmp_path / "s.tif")[1]["crs"].to_epsg() == 32736


def test_explicit_crs(tmp_path: Path) -> None:
    src = geographic_dem(tmp_path / "geo.tif", -155.6, 19.9, n=60, step=0.001)
    prepare_dem([src], tmp_path / "o.tif", resolution_m=50.0, crs="EPSG:3857")
    assert read(tmp_path / "o.tif")[1]["crs"].to_epsg() == 3857


# --- mosaic ----------------------------------------------------------------------------------------


def test_two_adjacent_tiles_mosaic_seamlessly(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:80, 0:160]
    z = plane(rows, cols)
    whole = write_raster(tmp_path / "whole.tif", z, from_origin(X0, Y0, 30.0, 30.0))
    west = write_raster(tmp_path / "w.tif", z[:, :80].copy(), from_origin(X0, Y0, 30.0, 30.0), nodata=-32768)
    east = write_raster(tmp_path / "e.tif", z[:, 80:].copy(), from_origin(X0 + 80 * 30.0, Y0, 30.0, 30.0))
    prepare_dem([whole], tmp_path / "one.tif", resolution_m=25.0, crs=UTM, block_px=32)
    prepare_dem([west, east], tmp_path / "two.tif", resolution_m=25.0, crs=UTM, block_px=32)
    one, p1 = read(tmp_path / "one.tif")
    two, p2 = read(tmp_path / "two.tif")
    assert p1["transform"] == p2["transform"] and one.shape == two.shape
    seam_col = round((X0 + 80 * 30.0 - p2["transform"].c) / 25.0)
    assert np.all(two[1:-1, seam_col - 3 : seam_col + 3] != NODATA_FLOAT)
    np.testing.assert_allclose(two, one, atol=1e-3)


def test_overlapping_sources_first_listed_wins(tmp_path: Path) -> None:
    t = from_origin(X0, Y0, 30.0, 30.0)
    a = write_raster(tmp_path / "a.tif", np.full((40, 40), 100.0, np.float32), t)
    b = write_raster(tmp_path / "b.tif", np.full((40, 40), 200.0, np.float32), t)
    hole = np.full((40, 40), 300.0, np.float32)
    hole[10:30, 10:30] = np.nan
    c = write_raster(tmp_path / "c.tif", hole, t)
    prepare_dem([a, b], tmp_path / "ab.tif", resolution_m=30.0, crs=UTM)
    prepare_dem([b, a], tmp_path / "ba.tif", resolution_m=30.0, crs=UTM)
    prepare_dem([c, a], tmp_path / "ca.tif", resolution_m=30.0, crs=UTM, fill_max_void_px=0)
    assert np.all(read(tmp_path / "ab.tif")[0] == 100.0)
    assert np.all(read(tmp_path / "ba.tif")[0] == 200.0)
    ca = read(tmp_path / "ca.tif")[0]
    assert (
        np.all(ca[12:28, 12:28] == 100.0) and ca[0, 0] == 300.0
    )  # the gap of the first is filled by the second


def test_mosaic_of_geographic_tiles_is_seamless(tmp_path: Path) -> None:
    step = 0.001
    rows, cols = np.mgrid[0:100, 0:200]
    z = (1000 + 3.0 * cols + 2.0 * rows).astype(np.float32)
    a = write_raster(
        tmp_path / "a.tif", z[:, :100].copy(), from_origin(-155.6, 19.9, step, step), "EPSG:4326"
    )
    b = write_raster(
        tmp_path / "b.tif", z[:, 100:].copy(), from_origin(-155.6 + 100 * step, 19.9, step, step), "EPSG:4326"
    )
    whole = write_raster(tmp_path / "all.tif", z, from_origin(-155.6, 19.9, step, step), "EPSG:4326")
    prepare_dem([a, b], tmp_path / "ab.tif", resolution_m=50.0, fill_max_void_px=0)
    prepare_dem([whole], tmp_path / "one.tif", resolution_m=50.0, fill_max_void_px=0)
    ab, _ = read(tmp_path / "ab.tif")
    one, _ = read(tmp_path / "one.tif")
    np.testing.assert_allclose(ab, one, atol=1e-3)
    assert (ab != NODATA_FLOAT).mean() > 0.9


def test_mosaic_of_sources_in_different_crs(tmp_path: Path) -> None:
    # west tile in UTM, east tile in lon/lat: both reach the output, each where it has data
    west = plane_dem(tmp_path / "w.tif", shape=(60, 60), res=30.0)
    ll = transform_bounds(UTM, "EPSG:4326", X0 + 1800, Y0 - 1800, X0 + 3600, Y0)
    east = write_raster(
        tmp_path / "e.tif",
        np.full((60, 60), 5000.0, dtype=np.float32),
        from_origin(ll[0], ll[3], (ll[2] - ll[0]) / 60, (ll[3] - ll[1]) / 60),
        crs="EPSG:4326",
    )
    out = tmp_path / "o.tif"
    prepare_dem([west, east], out, resolution_m=30.0, crs=UTM, fill_max_void_px=0)
    data, prof = read(out)
    assert data.shape[1] >= 118
    t = prof["transform"]
    row, col = int((t.f - (Y0 - 30 * 30.5)) / 30.0), int((X0 + 30 * 30.5 - t.c) / 30.0)
    assert np.isclose(data[row, col], plane(np.array(30), np.array(30)), atol=1e-3)
    assert np.isclose(data[row, col + 60], 5000.0, atol=1e-3)


# --- nodata, voids ---------------------------------------------------------------------------------


def test_nodata_nan_and_voids(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:120, 0:120]
    z = plane(rows, cols)
    z[20, 20] = -32768  # one-pixel SRTM void: filled
    z[40:43, 60:62] = np.nan  # small NaN void: filled
    z[70:100, 30:70] = -32768  # 30 x 40 px void: kept
    src = write_raster(tmp_path / "s.tif", z, from_origin(X0, Y0, 30.0, 30.0), nodata=-32768)
    out = tmp_path / "o.tif"
    prepare_dem([src], out, resolution_m=30.0, crs=UTM, fill_max_void_px=10, block_px=64)
    data, _ = read(out)
    expected = plane(rows, cols)
    # filled voids close to the plane (inverse-distance interpolation of a plane is near-exact)
    assert abs(data[20, 20] - expected[20, 20]) < 2.0
    assert np.all(np.abs(data[40:43, 60:62] - expected[40:43, 60:62]) < 6.0)
    # the big void stays nodata, the values around it are not smeared by -32768
    assert np.all(data[72:98, 32:68] == NODATA_FLOAT)
    valid = data != NODATA_FLOAT
    assert data[valid].min() >= expected.min() - 1e-3
    assert data[valid].max() <= expected.max() + 1e-3
    assert not np.isnan(data).any()
    assert valid.sum() == 120 * 120 - 30 * 40


def test_fill_disabled_keeps_small_voids(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:50, 0:50]
    z = plane(rows, cols)
    z[25, 25] = np.nan
    src = write_raster(tmp_path / "s.tif", z, from_origin(X0, Y0, 30.0, 30.0))
    prepare_dem([src], tmp_path / "o.tif", resolution_m=30.0, crs=UTM, fill_max_void_px=0)
    data, _ = read(tmp_path / "o.tif")
    assert data[25, 25] == NODATA_FLOAT
    assert (data == NODATA_FLOAT).sum() == 1


def test_nodata_override(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:50, 0:50]
    z = plane(rows, cols)
    z[10:40, 10:40] = -500.0  # no nodata tag in the file; the override marks it
    src = write_raster(tmp_path / "s.tif", z, from_origin(X0, Y0, 30.0, 30.0))
    prepare_dem([src], tmp_path / "o.tif", resolution_m=30.0, crs=UTM, nodata=-500.0, fill_max_void_px=5)
    data, _ = read(tmp_path / "o.tif")
    assert np.all(data[10:40, 10:40] == NODATA_FLOAT)
    assert data[data != NODATA_FLOAT].min() >= 1000.0


def test_blockwise_equals_one_block(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:90, 0:90]
    z = 1000 + 50 * np.sin(rows / 7.0) * np.cos(cols / 5.0) + cols
    z = z.astype(np.float32)
    z[30:34, 62:66] = np.nan  # straddles the 32 px block boundary at 32 and 64
    z[5, 31:33] = np.nan
    z[60:80, 5:25] = np.nan  # large
    src = write_raster(tmp_path / "s.tif", z, from_origin(X0 + 7, Y0 - 3, 30.0, 30.0))
    prepare_dem([src], tmp_path / "a.tif", resolution_m=30.0, crs=UTM, fill_max_void_px=6, block_px=32)
    prepare_dem([src], tmp_path / "b.tif", resolution_m=30.0, crs=UTM, fill_max_void_px=6, block_px=4096)
    a, _ = read(tmp_path / "a.tif")
    b, _ = read(tmp_path / "b.tif")
    np.testing.assert_array_equal(a, b)
    assert (a == NODATA_FLOAT).sum() > 300  # the big void is kept


def test_fill_small_voids_unit() -> None:
    z = np.tile(np.arange(40, dtype=np.float32), (40, 1))
    z[10:13, 10:13] = np.nan  # 3 px: filled
    z[20:30, 20:35] = np.nan  # 15 px across: kept
    z[0:2, 5] = np.nan  # touches the edge: kept
    out, n = fill_small_voids(z.copy(), 5)
    assert n == 9
    np.testing.assert_allclose(out[10:13, 10:13], np.tile(np.arange(10, 13), (3, 1)), atol=1.0)
    assert np.isnan(out[20:30, 20:35]).all()
    assert np.isnan(out[0:2, 5]).all()
    same, n0 = fill_small_voids(z.copy(), 0)
    assert n0 == 0 and np.isnan(same[11, 11])


def test_srtm_hgt_source(tmp_path: Path) -> None:
    # a real SRTM3 .hgt (1201 x 1201 big-endian int16, georeferenced by its name), voids -32768
    rows, cols = np.mgrid[0:1201, 0:1201]
    z = (1000 + rows + 2 * cols).astype(">i2")
    z[600, 600] = -32768  # at lon -155.5, lat 19.5: filled
    z[100:200, 100:200] = -32768  # ~9 km void: kept
    hgt = tmp_path / "N19W156.hgt"
    z.tofile(hgt)
    out = tmp_path / "o.tif"
    prepare_dem([hgt], out, resolution_m=90.0, bbox_lonlat=[-155.95, 19.45, -155.4, 19.95], region="hgt")
    data, prof = read(out)
    assert prof["crs"].to_epsg() == 32605

    def at(lon: float, lat: float) -> float:
        with rasterio.open(out) as ds:
            x, y = rasterio.warp.transform("EPSG:4326", ds.crs, [lon], [lat])
            r, c = ds.index(x[0], y[0])
        return float(data[r, c])

    def expected(lon: float, lat: float) -> float:
        return 1000 + (20 - lat) * 1200 + 2 * (lon + 156) * 1200

    for lon, lat in [(-155.5, 19.5), (-155.7, 19.6), (-155.45, 19.9)]:
        assert abs(at(lon, lat) - expected(lon, lat)) < 10.0
    assert at(-155.875, 19.875) == NODATA_FLOAT
    valid = data != NODATA_FLOAT
    assert data[valid].min() > 900 and data[valid].max() < 1000 + 1200 * 3


def test_two_srtm_tiles_mosaic(tmp_path: Path) -> None:
    # neighbouring .hgt tiles share their edge column; the mosaic across lon -155 has no seam
    rows, cols = np.mgrid[0:1201, 0:1201]
    for name, col0 in [("N19W156.hgt", 0), ("N19W155.hgt", 1200)]:
        (1000 + rows + cols + col0).astype(">i2").tofile(tmp_path / name)
    out = tmp_path / "o.tif"
    tiles = [tmp_path / "N19W156.hgt", tmp_path / "N19W155.hgt"]
    prepare_dem(tiles, out, resolution_m=90.0, bbox_lonlat=[-155.1, 19.6, -154.9, 19.7], fill_max_void_px=0)
    data, _ = read(out)
    assert (data != NODATA_FLOAT).all()
    # elevation rises by 1 m per 3" eastwards: no step at the seam in the middle column
    steps = np.diff(data[data.shape[0] // 2])
    assert np.all(np.abs(steps - steps.mean()) < 0.1)
    assert steps.mean() == pytest.approx(90.0 / (3 / 3600 * 111320 * math.cos(math.radians(19.65))), rel=0.05)


def test_zipped_srtm_hgt_sources(tmp_path: Path) -> None:
    # SRTM tiles as distributed (N19W156.SRTMGL1.hgt.zip): GDAL reads them zipped; voids -32768 stay nodata
    rows, cols = np.mgrid[0:1201, 0:1201]
    zips = []
    for name, col0 in [("N19W156", 0), ("N19W155", 1200)]:
        z = (1000 + rows + cols + col0).astype(">i2")
        z[300:400, 1100:1201] = -32768  # a large void near lon -155.1, lat 19.7
        (tmp_path / f"{name}.hgt").write_bytes(z.tobytes())
        zips.append(tmp_path / f"{name}.SRTMGL1.hgt.zip")
        with zipfile.ZipFile(zips[-1], "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(tmp_path / f"{name}.hgt", arcname=f"{name}.hgt")
        (tmp_path / f"{name}.hgt").unlink()
    out = tmp_path / "o.tif"
    prepare_dem(zips, out, resolution_m=90.0, bbox_lonlat=[-155.2, 19.6, -154.9, 19.8], region="zipped")
    data, prof = read(out)
    assert prof["crs"].to_epsg() == 32605
    with rasterio.open(out) as ds:
        x, y = rasterio.warp.transform("EPSG:4326", ds.crs, [-155.05, -154.95], [19.7, 19.65])
        r0, c0 = ds.index(x[0], y[0])
        r1, c1 = ds.index(x[1], y[1])
    assert data[r0, c0] == NODATA_FLOAT  # inside the void of N19W156
    expected = 1000 + (20 - 19.65) * 1200 + (-154.95 + 156) * 1200  # in N19W155, east of the seam
    assert abs(data[r1, c1] - expected) < 5.0


# --- bbox ------------------------------------------------------------------------------------------


def test_bbox_clipping(tmp_path: Path) -> None:
    src = geographic_dem(tmp_path / "geo.tif", -155.6, 19.9, n=200, step=0.001)
    bbox = [-155.55, 19.75, -155.45, 19.85]
    out = tmp_path / "o.tif"
    prepare_dem([src], out, resolution_m=50.0, bbox_lonlat=bbox, region="clip")
    data, prof = read(out)
    b = prof["bounds"]
    want = transform_bounds("EPSG:4326", prof["crs"], *bbox, densify_pts=21)
    # covers the bbox, by at most one pixel more on each side
    assert b.left <= want[0] < b.left + 50 and b.right - 50 < want[2] <= b.right
    assert b.bottom <= want[1] < b.bottom + 50 and b.top - 50 < want[3] <= b.top
    assert (data != NODATA_FLOAT).all()
    # a bbox larger than the data is cut to the data
    prepare_dem([src], tmp_path / "big.tif", resolution_m=50.0, bbox_lonlat=[-157, 19, -155, 21])
    full = tmp_path / "full.tif"
    prepare_dem([src], full, resolution_m=50.0)
    assert read(tmp_path / "big.tif")[0].shape == read(full)[0].shape


# --- summary ---------------------------------------------------------------------------------------


def test_dem_summary(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:40, 0:50]
    z = plane(rows, cols)
    z[:10, :] = np.nan
    src = write_raster(tmp_path / "s.tif", z, from_origin(X0, Y0, 30.0, 30.0))
    out = tmp_path / "o.tif"
    prepare_dem([src], out, resolution_m=30.0, crs=UTM, fill_max_void_px=0)
    s = dem_summary(out)
    assert (s["width"], s["height"]) == (50, 40)
    assert s["crs"] == UTM and s["resolution_m"] == 30.0
    assert s["valid_fraction"] == pytest.approx(0.75)
    assert s["min_elevation_m"] == pytest.approx(1030.0)
    assert s["max_elevation_m"] == pytest.approx(1000 + 2 * 49 + 3 * 39)


def test_target_grid_alignment() -> None:
    t, w, h = target_grid((1001.0, 2003.0, 1090.0, 2100.0), 30.0)
    assert (t.c, t.f, w, h) == (990.0, 2100.0, 4, 4)
    t, w, h = target_grid((990.0, 1980.0, 1080.0, 2100.0), 30.0)
    assert (t.c, t.f, w, h) == (990.0, 2100.0, 3, 4)


# --- errors ----------------------------------------------------------------------------------------


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_error_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        prepare_dem([tmp_path / "nope.tif"], tmp_path / "o.tif", resolution_m=30, region="kx")
    assert_one_line_error(e, "region 'kx'", "nope.tif", "not found")
    assert not (tmp_path / "o.tif").exists()


def test_error_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(InputError) as e:
        prepare_dem([tmp_path / "empty.tif"], tmp_path / "o.tif", resolution_m=30, region="kx")
    assert_one_line_error(e, "region 'kx'", "empty.tif", "0 bytes")


def test_error_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "bad.tif").write_bytes(b"II*\x00this is not a tiff at all" * 10)
    with pytest.raises(InputError) as e:
        prepare_dem([tmp_path / "bad.tif"], tmp_path / "o.tif", resolution_m=30, region="kx")
    assert_one_line_error(e, "region 'kx'", "bad.tif")


def test_error_no_crs(tmp_path: Path) -> None:
    src = plane_dem(tmp_path / "nocrs.tif", crs=None)
    with pytest.raises(InputError) as e:
        prepare_dem([src], tmp_path / "o.tif", resolution_m=30, region="kx")
    assert_one_line_error(e, "region 'kx'", "nocrs.tif", "no CRS")


def test_error_one_bad_file_among_good_ones(tmp_path: Path) -> None:
    good = plane_dem(tmp_path / "good.tif")
    with pytest.raises(InputError) as e:
        prepare_dem([good, tmp_path / "missing.tif"], tmp_path / "o.tif", resolution_m=30, region="kx")
    assert_one_line_error(e, "missing.tif")


def test_error_bbox_outside(tmp_path: Path) -> None:
    src = geographic_dem(tmp_path / "geo.tif", -155.6, 19.9, n=50, step=0.001)
    with pytest.raises(InputError) as e:
        prepare_dem([src], tmp_path / "o.tif", resolution_m=30, bbox_lonlat=[10, 10, 11, 11], region="kx")
    assert_one_line_error(e, "region 'kx'", "geo.tif", "does not intersect")
    assert not (tmp_path / "o.tif").exists()


def test_error_bad_bbox(tmp_path: Path) -> None:
    src = plane_dem(tmp_path / "s.tif")
    with pytest.raises(InputError) as e:
        prepare_dem([src], tmp_path / "o.tif", resolution_m=30, bbox_lonlat=[11, 10, 10, 11], region="kx")
    assert_one_line_error(e, "region 'kx'", "bbox", "west < east")


def test_error_all_nodata(tmp_path: Path) -> None:
    src = write_raster(
        tmp_path / "void.tif", np.full((20, 20), -32768, np.int16), from_origin(X0, Y0, 30, 30), nodata=-32768
    )
    out = tmp_path / "o.tif"
    with pytest.raises(InputError) as e:
        prepare_dem([src], out, resolution_m=30, crs=UTM, region="kx")
    assert_one_line_error(e, "region 'kx'", "void.tif", "no valid elevation")
    assert list(tmp_path.iterdir()) == [src]  # neither output nor temporary file left behind


def test_error_too_small(tmp_path: Path) -> None:
    src = plane_dem(tmp_path / "s.tif", shape=(10, 10), res=30.0)  # 300 m wide
    with pytest.raises(InputError) as e:
        prepare_dem([src], tmp_path / "o.tif", resolution_m=1000.0, crs=UTM, region="kx")
    assert_one_line_error(e, "region 'kx'", "s.tif", "2 x 2")


def test_error_absurd_grid(tmp_path: Path) -> None:
    src = geographic_dem(tmp_path / "geo.tif", -155.6, 19.9, n=20, step=0.01)
    with pytest.raises(InputError) as e:
        prepare_dem([src], tmp_path / "o.tif", resolution_m=0.001, region="kx")
    assert_one_line_error(e, "region 'kx'", "geo.tif", "resolution_m=0.001")


@pytest.mark.parametrize("res", [0, -30.0, float("nan")])
def test_error_resolution(tmp_path: Path, res: float) -> None:
    src = plane_dem(tmp_path / "s.tif")
    with pytest.raises(InputError) as e:
        prepare_dem([src], tmp_path / "o.tif", resolution_m=res, region="kx")
    assert_one_line_error(e, "region 'kx'", "resolution_m")


@pytest.mark.parametrize(
    ("crs", "text"),
    [
        ("EPSG:4326", "CRS EPSG:4326 is not projected in metres (geographic)"),
        ("EPSG:2227", "not projected in metres"),  # California zone 3, US survey feet
        ("EPSG:99999999", "not a valid CRS"),
        ("nonsense", "not a valid CRS"),
    ],
)
def test_error_bad_target_crs(tmp_path: Path, crs: str, text: str) -> None:
    src = plane_dem(tmp_path / "s.tif")
    with pytest.raises(InputError) as e:
        prepare_dem([src], tmp_path / "o.tif", resolution_m=30, crs=crs, region="x")
    assert_one_line_error(e, "region 'x'", text)
