"""Snakemake script of rule crossval_summary: the per-fold and per-region cross-validation tables."""

from cinderseg.assess.crossval import crossval_tables
from cinderseg.core.step import run_step

run_step(
    snakemake.log[0],
    crossval_tables,
    list(snakemake.input),
    snakemake.output.folds,
    snakemake.output.summary,
)
