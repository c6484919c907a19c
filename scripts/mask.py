"""Snakemake script of rule mask: rasterize cone labels onto the region's DEM grid."""

from cinderseg.core.step import run_step
from cinderseg.data.mask import rasterize_labels

run_step(
    snakemake.log[0],
    rasterize_labels,
    snakemake.input.labels,
    snakemake.input.dem,
    snakemake.output.mask,
    radius_field=snakemake.params.radius_field,
    region=snakemake.wildcards.region,
)
