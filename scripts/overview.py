"""Snakemake script of rule overview: hillshade, labelled cones and tiles of a region."""

from cinderseg.assess.figures import plot_region_overview
from cinderseg.core.step import run_step

run_step(
    snakemake.log[0],
    plot_region_overview,
    snakemake.input.dem,
    snakemake.output.png,
    region=snakemake.wildcards.region,
    mask_path=snakemake.input.mask,
    manifest_path=snakemake.input.manifest,
)
