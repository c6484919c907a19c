"""Snakemake script of rule metrics_summary: one table of all labelled regions' metrics, and one of
where each method lost the cones it missed."""

from cinderseg.assess.evaluate import summarize_metrics, summarize_misses
from cinderseg.core.step import run_step


def main(paths: list[str], table: str, misses: str) -> None:
    summarize_metrics(paths, table)
    summarize_misses(paths, misses)


run_step(snakemake.log[0], main, list(snakemake.input), snakemake.output.table, snakemake.output.misses)
