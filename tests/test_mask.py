"""Tests of cinderseg.data.mask: reading, repairing, reprojecting and rasterizing cone labels."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import LineString, Point, Polygon, box

from cinderseg.core.errors import InputError
from cinderseg.core.raster import MASK_NODATA, NODATA_FLOAT
from cinderseg.data.mask import load_labels, rasterize_labels

UTM = "EPSG:32605"
X0, Y0 = 200_000.0, 2_200_000.0  # upper-left corner of the test DEM
RES = 10.0
H, W = 200, 240  # 2 km x 2.4 km


def make_dem(path: Path, *, void: tuple[slice, slice] | None = None, res: float = RES) -> Path:
    z = np.full((H, W), 1500.0, dtype=np.float32)
    if void is not None:
        z[void] = NODATA_FLOAT
    profile = {
        "driver": "GTiff",
        "width": W,
        "height": H,
        "count": 1,
        "dtype": "float32",
        "crs": UTM,
        "transform": from_origin(X0, Y0, res, res),
        "nodata": NODATA_FLOAT,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(z, 1)
    return path


def write_labels(path: Path, geoms: list, crs: str | None = UTM, **columns: list) -> Path:
    gdf = gpd.GeoDataFrame(columns, geometry=geoms, crs=crs)
    gdf.to_file(path)
    return path


def read_mask(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile


def centre(row: float, col: float) -> Point:
    """The point at the centre of DEM pixel (row, col)."""
    return Point(X0 + (col + 0.5) * RES, Y0 - (row + 0.5) * RES)


# --- correctness -----------------------------------------------------------------------------------


def test_point_circle_area_and_profile(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    labels = write_labels(tmp_path / "l.gpkg", [centre(100, 100)], radius_m=[300.0], name=["a"])
    out = tmp_path / "mask.tif"
    n = rasterize_labels(labels, dem, out, region="r")
    assert n == 1
    mask, prof = read_mask(out)
    with rasterio.open(dem) as d:
        assert (prof["transform"], prof["crs"], prof["width"], prof["height"]) == (
            d.transform,
            d.crs,
            d.width,
            d.height,
        )
    assert prof["dtype"] == "uint8" and prof["nodata"] == MASK_NODATA
    assert prof["compress"] == "deflate"
    assert set(np.unique(mask)) == {0, 1}
    expected = math.pi * 300.0**2 / RES**2
    assert abs(mask.sum() - expected) / expected < 0.01
    assert mask[100, 100] == 1 and mask[100, 100 + 29] == 1
    assert mask[100, 100 + 31] == 0 and mask[100 + 31, 100] == 0 and mask[100 - 31, 100] == 0


def test_polygon_labels_exact(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    square = box(X0 + 500, Y0 - 1000, X0 + 1000, Y0 - 500)  # 50 x 50 px on the pixel edges
    labels = write_labels(tmp_path / "l.geojson", [square], id=[1])
    out = tmp_path / "m.tif"
    assert rasterize_labels(labels, dem, out) == 1
    mask, _ = read_mask(out)
    assert mask.sum() == 2500
    assert mask[50:100, 50:100].all()


def test_labels_in_lonlat_over_utm_dem(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    pts = [centre(60, 60), centre(140, 170)]
    square = box(X0 + 1500, Y0 - 500, X0 + 1800, Y0 - 200)
    utm = write_labels(tmp_path / "utm.gpkg", [*pts, square], radius_m=[200.0, 250.0, None])
    ll_geoms = gpd.GeoSeries([*pts, square], crs=UTM).to_crs("EPSG:4326")
    ll = write_labels(tmp_path / "ll.gpkg", list(ll_geoms), crs="EPSG:4326", radius_m=[200.0, 250.0, None])
    assert rasterize_labels(utm, dem, tmp_path / "a.tif") == 3
    assert rasterize_labels(ll, dem, tmp_path / "b.tif") == 3
    a, _ = read_mask(tmp_path / "a.tif")
    b, _ = read_mask(tmp_path / "b.tif")
    # circles are buffered in metres after reprojection: same areas, a few edge pixels may differ
    assert abs(int(a.sum()) - int(b.sum())) <= 10
    assert (a != b).sum() <= 20
    expected = math.pi * (200.0**2 + 250.0**2) / RES**2 + 900
    assert abs(b.sum() - expected) / expected < 0.01


def test_mixed_points_and_polygons(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    geoms = [centre(50, 50), box(X0 + 1200, Y0 - 1200, X0 + 1400, Y0 - 1000)]
    labels = write_labels(tmp_path / "l.geojson", geoms, r=[100.0, 0.0])  # a polygon's radius is ignored
    n = rasterize_labels(labels, dem, tmp_path / "m.tif", radius_field="r")
    assert n == 2
    mask, _ = read_mask(tmp_path / "m.tif")
    expected = math.pi * 100.0**2 / RES**2 + 400
    assert abs(mask.sum() - expected) / expected < 0.02


def test_shapefile_points(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    labels = write_labels(tmp_path / "cones.shp", [centre(50, 50), centre(150, 150)], rad=[100.0, 150.0])
    assert rasterize_labels(labels, dem, tmp_path / "m.tif", radius_field="rad") == 2
    mask, _ = read_mask(tmp_path / "m.tif")
    expected = math.pi * (100.0**2 + 150.0**2) / RES**2
    assert abs(mask.sum() - expected) / expected < 0.02


def test_invalid_and_empty_geometries(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    bowtie = Polygon([(X0 + 200, Y0 - 200), (X0 + 600, Y0 - 600), (X0 + 600, Y0 - 200), (X0 + 200, Y0 - 600)])
    assert not bowtie.is_valid
    geoms = [bowtie, None, Polygon(), box(X0 + 1000, Y0 - 1100, X0 + 1100, Y0 - 1000)]
    labels = write_labels(tmp_path / "l.gpkg", geoms, id=[1, 2, 3, 4])
    gdf = load_labels(labels, target_crs=UTM)
    assert len(gdf) == 2 and gdf.is_valid.all()
    assert list(gdf["id"]) == [1, 4]
    assert gdf.geometry.area.iloc[0] == pytest.approx(2 * 0.5 * 400 * 200)  # two triangles
    assert rasterize_labels(labels, dem, tmp_path / "m.tif") == 2
    mask, _ = read_mask(tmp_path / "m.tif")
    assert abs(int(mask.sum()) - (800 + 100)) <= 20


def test_load_labels_buffers_in_metres_after_reprojection(tmp_path: Path) -> None:
    ll = gpd.GeoSeries([centre(100, 100)], crs=UTM).to_crs("EPSG:4326")
    path = write_labels(tmp_path / "l.gpkg", list(ll), crs="EPSG:4326", radius_m=[400.0])
    gdf = load_labels(path, target_crs=UTM)
    assert gdf.crs.to_epsg() == 32605
    assert gdf.geometry.iloc[0].area == pytest.approx(math.pi * 400.0**2, rel=0.003)
    assert gdf.geometry.iloc[0].centroid.distance(centre(100, 100)) < 0.01
    with pytest.raises(InputError, match="geographic"):
        load_labels(path, target_crs="EPSG:4326")


def test_nodata_carried(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif", void=(slice(0, 50), slice(0, 240)))
    labels = write_labels(tmp_path / "l.gpkg", [centre(50, 120)], radius_m=[200.0])
    rasterize_labels(labels, dem, tmp_path / "m.tif")
    mask, _ = read_mask(tmp_path / "m.tif")
    assert (mask[:50] == MASK_NODATA).all()
    assert (mask[50:] != MASK_NODATA).all()
    inside = math.pi * 200.0**2 / RES**2
    assert abs((mask == 1).sum() - inside / 2) / (inside / 2) < 0.03  # the half over nodata is 255


def test_windowed_equals_single_block(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif", void=(slice(150, 170), slice(10, 90)))
    rng = np.random.default_rng(3)
    pts = [centre(r, c) for r, c in rng.uniform(0, 200, size=(25, 2))]
    labels = write_labels(tmp_path / "l.gpkg", pts, radius_m=list(rng.uniform(30, 250, size=25)))
    rasterize_labels(labels, dem, tmp_path / "a.tif", block_px=32)
    rasterize_labels(labels, dem, tmp_path / "b.tif", block_px=4096)
    a, _ = read_mask(tmp_path / "a.tif")
    b, _ = read_mask(tmp_path / "b.tif")
    np.testing.assert_array_equal(a, b)
    assert (a == 1).sum() > 1000


def test_labels_partly_outside_count_only_those_inside(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    pts = [centre(100, 100), centre(100, -100), centre(-5, 120)]  # inside, outside, overlapping the edge
    labels = write_labels(tmp_path / "l.gpkg", pts, radius_m=[100.0, 100.0, 100.0])
    assert rasterize_labels(labels, dem, tmp_path / "m.tif") == 2


# --- errors ----------------------------------------------------------------------------------------


def one_line(excinfo: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_error_missing_labels(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    with pytest.raises(InputError) as e:
        rasterize_labels(tmp_path / "none.gpkg", dem, tmp_path / "m.tif", region="mk")
    one_line(e, "region 'mk'", "none.gpkg", "not found")
    assert not (tmp_path / "m.tif").exists()


def test_error_unreadable_labels(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    (tmp_path / "bad.gpkg").write_bytes(b"not a geopackage" * 50)
    (tmp_path / "empty.geojson").write_bytes(b"")
    with pytest.raises(InputError) as e:
        rasterize_labels(tmp_path / "bad.gpkg", dem, tmp_path / "m.tif", region="mk")
    one_line(e, "region 'mk'", "bad.gpkg", "not a readable vector file")
    with pytest.raises(InputError) as e:
        rasterize_labels(tmp_path / "empty.geojson", dem, tmp_path / "m.tif", region="mk")
    one_line(e, "region 'mk'", "empty.geojson", "0 bytes")


def test_error_no_features(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    path = tmp_path / "empty.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(InputError) as e:
        rasterize_labels(path, dem, tmp_path / "m.tif", region="mk")
    one_line(e, "region 'mk'", "no features", "empty.geojson")


def test_error_no_usable_geometry(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    empty = write_labels(tmp_path / "e.gpkg", [None, Polygon()], id=[1, 2])
    with pytest.raises(InputError) as e:
        rasterize_labels(empty, dem, tmp_path / "m.tif", region="mk")
    one_line(e, "region 'mk'", "no usable geometry", "e.gpkg")
    lines = write_labels(tmp_path / "lines.gpkg", [LineString([(X0, Y0), (X0 + 100, Y0 - 100)])], id=[1])
    with pytest.raises(InputError) as e:
        rasterize_labels(lines, dem, tmp_path / "m.tif", region="mk")
    one_line(e, "region 'mk'", "no usable geometry", "LineString", "lines.gpkg")


def test_error_points_without_radius(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    labels = write_labels(tmp_path / "p.gpkg", [centre(10, 10)], diameter=[300.0], name=["x"])
    with pytest.raises(InputError) as e:
        rasterize_labels(labels, dem, tmp_path / "m.tif", region="mk")
    one_line(e, "region 'mk'", "p.gpkg", "'radius_m'", "diameter", "name")


def test_error_bad_radius(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    pts = [centre(10, 10), centre(20, 20), centre(30, 30), centre(40, 40)]
    labels = write_labels(tmp_path / "p.gpkg", pts, radius_m=[100.0, 0.0, -5.0, None])
    with pytest.raises(InputError) as e:
        rasterize_labels(labels, dem, tmp_path / "m.tif", region="mk")
    one_line(e, "region 'mk'", "p.gpkg", "3 of 4 point labels", "radius_m")


def test_error_labels_outside_dem(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    labels = write_labels(tmp_path / "far.gpkg", [Point(X0 + 50_000, Y0)], radius_m=[300.0])
    with pytest.raises(InputError) as e:
        rasterize_labels(labels, dem, tmp_path / "m.tif", region="mk")
    one_line(e, "region 'mk'", "far.gpkg", "outside the DEM", "dem.tif")
    assert not (tmp_path / "m.tif").exists()


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_error_labels_without_crs(tmp_path: Path) -> None:
    dem = make_dem(tmp_path / "dem.tif")
    labels = write_labels(tmp_path / "nocrs.shp", [centre(10, 10)], crs=None, radius_m=[100.0])
    assert not (tmp_path / "nocrs.prj").exists()
    with pytest.raises(InputError) as e:
        rasterize_labels(labels, dem, tmp_path / "m.tif", region="mk")
    one_line(e, "region 'mk'", "nocrs.shp", "no CRS")


def test_error_bad_dem(tmp_path: Path) -> None:
    labels = write_labels(tmp_path / "l.gpkg", [centre(10, 10)], radius_m=[100.0])
    with pytest.raises(InputError) as e:
        rasterize_labels(labels, tmp_path / "nodem.tif", tmp_path / "m.tif", region="mk")
    one_line(e, "region 'mk'", "nodem.tif")
