"""Snakemake script of rule baseline: the classical LoG cone detector, measured like the network's cones."""

from cinderseg.cones.baseline import BaselineSettings, run_baseline
from cinderseg.core.step import run_step

run_step(
    snakemake.log[0],
    run_baseline,
    snakemake.input.dem,
    snakemake.output.cones,
    BaselineSettings.from_config(snakemake.params.baseline),
    region=snakemake.wildcards.region,
    ring_width_px=snakemake.params.ring_width_px,
)
