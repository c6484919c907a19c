"""Snakemake script of rule dem: mosaic, clip and reproject DEM files to the region's grid."""

from cinderseg.core.step import run_step
from cinderseg.terrain.dem import prepare_dem

region = snakemake.params.region
run_step(
    snakemake.log[0],
    prepare_dem,
    list(snakemake.input.dem),
    snakemake.output.dem,
    resolution_m=region["resolution_m"],
    crs=region.get("crs"),
    bbox_lonlat=region.get("bbox"),
    nodata=region.get("nodata"),
    fill_max_void_px=snakemake.params.dem["fill_max_void_px"],
    block_px=snakemake.params.dem["block_px"],
    region=snakemake.wildcards.region,
)
