"""Snakemake script of rules mosaic_dem and mosaic_probability: a region's raster from its tiles' cores."""

from cinderseg.core.step import run_step
from cinderseg.terrain.maptiles import mosaic_cores
from cinderseg.workflow.maptiles import RegionTiles

plan = RegionTiles.from_params(snakemake.params.plan)
run_step(
    snakemake.log[0],
    mosaic_cores,
    list(snakemake.input),
    plan.tiles,
    plan.grid,
    snakemake.output[0],
    what=f"region '{snakemake.wildcards.region}'",
)
