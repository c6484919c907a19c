"""Snakemake script of rule tile_vectorize: the cone polygons of one map tile (no figures)."""

from cinderseg.cones.vectorize import VectorizeSettings, vectorize_cones
from cinderseg.core.step import run_step

run_step(
    snakemake.log[0],
    vectorize_cones,
    snakemake.input.probability,
    snakemake.input.dem,
    snakemake.output.cones,
    VectorizeSettings.from_config(snakemake.params.vectorize),
    region=snakemake.params.label,
)
