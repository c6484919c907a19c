"""Example input files shaped like a user's own data, made from a synthetic region.

``python -m cinderseg.data.examples OUT_DIR`` writes what ``config/local_files.yaml`` reads:
an SRTM-like DEM (EPSG:4326, int16 metres, voids -32768, about 1 arc-second) split into a
west and an east file, and the cone labels as lon/lat points with a ``radius_m`` attribute.
It lets users (and the tests) try the ``source: file`` path offline.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject, transform_bounds

from cinderseg.core.raster import atomic_write
from cinderseg.terrain.synthetic import SyntheticParams, generate_synthetic_region

SRTM_NODATA = -32768
WGS84 = CRS.from_epsg(4326)


def write_srtm_like_example(
    out_dir: Path,
    *,
    params: SyntheticParams | None = None,
    arcsec: float = 1.0,
    n_voids: int = 3,
) -> dict[str, Path]:
    """Write ``srtm_like_west.tif``, ``srtm_like_east.tif`` and ``cones.geojson`` into ``out_dir``.

    The DEM is the synthetic region reprojected (bilinear) to EPSG:4326 at ``arcsec`` arc-seconds,
    rounded to int16 metres, with ``n_voids`` small voids set to -32768 (SRTM's nodata), and split
    at its middle column into two files with a one-pixel overlap. Labels are the true cones as
    lon/lat points with ``radius_m`` (basal radius, metres). Returns the paths written.
    """
    params = params or SyntheticParams(seed=7, width_px=640, height_px=480, n_cones=25, resolution_m=30.0)
    region = generate_synthetic_region(params)
    height, width = region.dem.shape
    step = arcsec / 3600.0
    west, south, east, north = transform_bounds(
        region.crs, WGS84, *rasterio.transform.array_bounds(height, width, region.transform)
    )
    west, north = np.floor(west / step) * step, np.ceil(north / step) * step
    dst_w, dst_h = int(np.ceil((east - west) / step)), int(np.ceil((north - south) / step))
    geo_transform = from_origin(west, north, step, step)
    geo = np.full((dst_h, dst_w), np.nan, dtype="float32")
    reproject(
        region.dem,
        geo,
        src_transform=region.transform,
        src_crs=region.crs,
        dst_transform=geo_transform,
        dst_crs=WGS84,
        resampling=Resampling.bilinear,
        dst_nodata=np.nan,
    )
    dem = np.where(np.isnan(geo), SRTM_NODATA, np.round(geo)).astype("int16")
    rng = np.random.default_rng(params.seed)
    for _ in range(n_voids):
        r, c = rng.integers(10, dst_h - 10), rng.integers(10, dst_w - 10)
        dem[r - 2 : r + 2, c - 3 : c + 3] = SRTM_NODATA

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"west": out_dir / "srtm_like_west.tif", "east": out_dir / "srtm_like_east.tif"}
    split = dst_w // 2
    for name, cols in (("west", slice(0, split + 1)), ("east", slice(split, dst_w))):
        part = dem[:, cols]
        part_transform = geo_transform @ rasterio.Affine.translation(cols.start, 0)
        with (
            atomic_write(paths[name]) as tmp,
            rasterio.open(
                tmp,
                "w",
                driver="GTiff",
                width=part.shape[1],
                height=part.shape[0],
                count=1,
                dtype="int16",
                crs=WGS84,
                transform=part_transform,
                nodata=SRTM_NODATA,
            ) as dst,
        ):
            dst.write(part, 1)

    cones = region.cones
    points = gpd.GeoDataFrame(
        {"radius_m": cones["radius_m"].to_numpy(), "crater": cones["crater"].to_numpy()},
        geometry=gpd.points_from_xy(cones["x"], cones["y"]),
        crs=region.crs,
    ).to_crs(WGS84)
    paths["labels"] = out_dir / "cones.geojson"
    with atomic_write(paths["labels"]) as tmp:
        points.to_file(tmp, driver="GeoJSON")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the example files into")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic region")
    args = parser.parse_args(argv)
    params = replace(
        SyntheticParams(seed=7, width_px=640, height_px=480, n_cones=25, resolution_m=30.0), seed=args.seed
    )
    for name, path in write_srtm_like_example(args.out_dir, params=params).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
