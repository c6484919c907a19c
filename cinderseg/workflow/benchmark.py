"""Benchmark tables whose ``cpu_time`` counts every CPU second of a job.

What Snakemake measures: a rule's ``benchmark:`` table comes from sampling the job's process tree
with psutil, at the start, then every 0.5 s for 15 s, then every 30 s. ``cpu_time`` is the sum, over
the processes seen, of user + system seconds (all threads of a process) at each one's last sample.
Threads are counted; what happens after the last sample is not: up to 30 s times the threads of a
TensorFlow job (a 20-s job on 2 threads lost a fifth of its CPU time), and a process that ends
between two samples is counted only up to the earlier one. A job too short for one sample shows NA.

The fix: every step logs its own total at its end (:func:`cinderseg.core.step.run_step`, from
getrusage of its process and its ended children), and :func:`count_all_cpu_time` makes Snakemake's
writer of benchmark tables take the larger of that total and the sampled one. The log is found
from the table's path (:func:`cinderseg.workflow.paths.log_of_benchmark`). Snakemake writes the
table in the process that ran the job (the cluster job too), after the job has ended.
"""

from __future__ import annotations

from typing import Any

from cinderseg.core.step import job_cpu_seconds
from cinderseg.workflow.paths import log_of_benchmark


def count_all_cpu_time() -> None:
    """Make Snakemake's benchmark tables count the CPU time each step logged (once per process)."""
    import snakemake.benchmark

    write = snakemake.benchmark.write_benchmark_records
    if getattr(write, "counts_all_cpu_time", False):
        return

    def write_benchmark_records(records: list[Any], path: str, extended_fmt: bool) -> None:
        log = log_of_benchmark(str(path))
        logged = job_cpu_seconds(log) if log else None
        for record in records:
            if logged is not None and record.data_collected:
                record.cpu_time = max(record.cpu_time or 0.0, logged)
        write(records, path, extended_fmt)

    write_benchmark_records.counts_all_cpu_time = True  # type: ignore[attr-defined]
    snakemake.benchmark.write_benchmark_records = write_benchmark_records
