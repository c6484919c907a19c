"""Snakemake script of rules dem and tile_dem: mosaic, clip and reproject DEM files to the region's grid
(tile_dem: to one tile's window of it, params.grid)."""

from cinderseg.core.step import run_step
from cinderseg.terrain.dem import prepare_dem

region = snakemake.params.region
grid = snakemake.params.get("grid") or {}
run_step(
    snakemake.log[0],
    prepare_dem,
    list(snakemake.input.dem),
    snakemake.output.dem,
    resolution_m=region["resolution_m"],
    crs=grid.get("crs", region.get("crs")),
    bbox_lonlat=None if grid else region.get("bbox"),
    bounds=grid.get("bounds"),
    nodata=region.get("nodata"),
    fill_max_void_px=snakemake.params.dem["fill_max_void_px"],
    block_px=snakemake.params.dem["block_px"],
    region=snakemake.params.get("label") or snakemake.wildcards.region,
    allow_empty=bool(grid),  # a tile over the sea: empty outputs, not an error
)
