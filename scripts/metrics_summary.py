"""Snakemake script of rule metrics_summary: one table of all labelled regions' metrics."""

from cinderseg.assess.evaluate import summarize_metrics
from cinderseg.core.step import run_step

run_step(snakemake.log[0], summarize_metrics, list(snakemake.input), snakemake.output.table)
