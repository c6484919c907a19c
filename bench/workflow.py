"""The workflow as a user runs it: the default demo end to end, incremental reruns, Snakemake's overhead.

Every run is ``python -m snakemake --snakefile <repo>/Snakefile --workflow-profile
<repo>/profiles/default --directory <scratch> --cores all`` in a scratch folder under ``--work``
(never the repository's own ``results/``):

- :func:`bench_end_to_end`: the default config (``config.yaml``) from an empty ``results/``; wall
  time, and each step's time from the rules' benchmark files (``results/benchmarks/{step}/*.tsv``,
  summed over the step's jobs) as a share of the wall time.
- :func:`bench_incremental`: in that completed run, one change after another (each rerun starting
  from the previous one's results): a prediction threshold (``vectorize.threshold`` 0.5 -> 0.45), a
  model hyperparameter (``model.dropout`` 0.1 -> 0.2, with ``train.max_minutes`` 6 -> 0.5 so that the
  retraining fits the benchmark's budget: any ``model``/``train`` key reruns the same jobs), and an
  added 512 x 512 px synthetic test region; wall time of each rerun against the full run.
- :func:`bench_dry_run_overhead`: ``--dry-run`` with everything up to date, for 1, 10 and 50
  regions of the tiny config (``config/tiny.yaml``: one training region, the others copies of its
  test region with other seeds). The outputs are made up to date without running the jobs: every
  output the plan lists is created empty, then ``--touch`` sets their times in the DAG's order.
"""

from __future__ import annotations

import copy
import csv
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STEPS_DONE = re.compile(r"(\d+) of (\d+) steps \(100%\) done")


def snakemake(workdir: Path, *args: str, cores: str = "all") -> tuple[float, str]:
    """Run Snakemake on the repository's workflow in ``workdir``; (wall seconds, stdout + stderr).
    SystemExit with the log's tail if it fails."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--workflow-profile",
        str(REPO / "profiles" / "default"),
        "--directory",
        str(workdir),
        "--cores",
        cores,
        *args,
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    output = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"bench: snakemake {' '.join(args)} failed in {workdir}:\n{output[-4000:]}")
    return seconds, output


def jobs_done(output: str) -> int:
    """Number of jobs a Snakemake run executed (0 when nothing was to be done)."""
    match = STEPS_DONE.findall(output)
    return int(match[-1][0]) if match else 0


def step_times(benchmarks: Path) -> dict[str, dict[str, float]]:
    """Per step (the benchmark files' folder names): jobs, summed seconds and the largest max_rss
    (MiB) of ``results/benchmarks/{step}/*.tsv`` (Snakemake's ``benchmark:`` files)."""
    steps: dict[str, dict[str, float]] = {}
    for tsv in sorted(benchmarks.glob("*/*.tsv")):
        with tsv.open(newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            continue
        s = steps.setdefault(tsv.parent.name, {"jobs": 0, "seconds": 0.0, "max_rss_mb": 0.0})
        s["jobs"] += 1
        s["seconds"] += float(rows[-1]["s"])
        rss = rows[-1].get("max_rss", "NA")
        if rss not in ("NA", "", None):
            s["max_rss_mb"] = max(s["max_rss_mb"], float(rss))
    return steps


def bench_end_to_end(workdir: Path, config: Path = REPO / "config.yaml") -> dict[str, Any]:
    """``snakemake --cores all`` on ``config`` from an empty ``results/`` in ``workdir`` (emptied
    first); wall time and each step's share."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    shutil.copy(config, workdir / "config.yaml")
    seconds, output = snakemake(workdir)
    steps = step_times(workdir / "results" / "benchmarks")
    for s in steps.values():
        s["seconds"] = round(s["seconds"], 1)
        s["share_of_wall"] = round(s["seconds"] / seconds, 4)
    jobs_s = sum(s["seconds"] for s in steps.values())
    return {
        "benchmark": "end_to_end",
        "workdir": str(workdir),
        "config": str(config),
        "wall_seconds": round(seconds, 1),
        "jobs": jobs_done(output),
        "sum_of_job_seconds": round(jobs_s, 1),
        "steps": dict(sorted(steps.items(), key=lambda kv: -kv[1]["seconds"])),
    }


def incremental_changes(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The reruns' configs, each with one more change than the one before: (label, config)."""
    threshold = copy.deepcopy(config)
    old_threshold = threshold.setdefault("vectorize", {}).get("threshold", 0.5)  # schema defaults
    threshold["vectorize"]["threshold"] = round(old_threshold - 0.05, 3)
    hyper = copy.deepcopy(threshold)
    old_dropout = hyper.setdefault("model", {}).get("dropout", 0.1)
    old_minutes = hyper.setdefault("train", {}).get("max_minutes", 0)
    hyper["model"]["dropout"] = round(old_dropout + 0.1, 3)
    hyper["train"]["max_minutes"] = 0.5
    region = copy.deepcopy(hyper)
    region["regions"]["synth_added"] = {
        "source": "synthetic",
        "role": "test",
        "labels": "synthetic",
        "resolution_m": 30,
        "synthetic": {"seed": 3, "width_px": 512, "height_px": 512, "origin_x": 300000, "n_cones": 15},
    }
    return [
        (
            f"prediction threshold (vectorize.threshold {old_threshold:g} -> {old_threshold - 0.05:g})",
            threshold,
        ),
        (
            f"model hyperparameter (model.dropout {old_dropout:g} -> {old_dropout + 0.1:g}, "
            f"train.max_minutes {old_minutes:g} -> 0.5)",
            hyper,
        ),
        ("added region (512 x 512 px synthetic test region)", region),
    ]


def bench_incremental(workdir: Path, full_run_seconds: float) -> dict[str, Any]:
    """Reruns after each change of :func:`incremental_changes` in the completed run of ``workdir``;
    wall time and jobs of each, against the full run's ``full_run_seconds``."""
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    rows = []
    for label, changed in incremental_changes(config):
        name = f"bench_rerun_{len(rows) + 1}.yaml"
        (workdir / name).write_text(yaml.safe_dump(changed, sort_keys=False))
        seconds, output = snakemake(workdir, "--configfile", name)
        rows.append(
            {
                "change": label,
                "configfile": name,
                "wall_seconds": round(seconds, 1),
                "jobs": jobs_done(output),
                "ratio_to_full_run": round(seconds / full_run_seconds, 4),
            }
        )
    return {"benchmark": "incremental", "full_run_seconds": full_run_seconds, "reruns": rows}


def tiny_config(n_regions: int) -> dict[str, Any]:
    """The tiny config with ``n_regions`` regions: its training region and n - 1 copies of its test
    region (other seeds and origins)."""
    config = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    train_name, test_name = list(config["regions"])
    test = config["regions"].pop(test_name)
    for k in range(1, n_regions):
        region = copy.deepcopy(test)
        region["synthetic"]["seed"] = 100 + k
        region["synthetic"]["origin_x"] = 215000 + 10000 * k
        config["regions"][f"tiny_{k:02d}"] = region
    assert next(iter(config["regions"])) == train_name
    return config


def make_up_to_date(workdir: Path, configfile: str) -> int:
    """Create every output the workflow would make as an empty file, then ``--touch`` them in the
    DAG's order (no job runs); the number of outputs."""
    _, summary = snakemake(workdir, "--configfile", configfile, "--summary", cores="1")
    outputs = [
        line.split("\t")[0] for line in summary.splitlines() if line.startswith("results/") and "\t" in line
    ]
    for out in outputs:
        path = workdir / out
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    snakemake(workdir, "--configfile", configfile, "--touch", cores="1")
    return len(outputs)


def bench_dry_run_overhead(
    work: Path,
    counts: tuple[int, ...] = (1, 10, 50),
    repeats: int = 3,
    completed: tuple[Path, str] | None = None,
) -> dict[str, Any]:
    """Wall time of ``snakemake --dry-run`` with everything up to date for tiny configs of ``counts``
    regions (each in its own scratch folder; the best of ``repeats`` runs), and in a ``completed``
    run's (folder, configfile) for comparison; SystemExit if a dry run still plans jobs."""
    rows = []
    for n in counts:
        workdir = work / f"dry_run_{n}"
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        (workdir / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(n), sort_keys=False))
        n_outputs = make_up_to_date(workdir, "tiny.yaml")
        runs = []
        for _ in range(repeats):
            seconds, output = snakemake(workdir, "--configfile", "tiny.yaml", "--dry-run")
            if "Nothing to be done" not in output:
                raise SystemExit(f"bench: the dry run of {n} region(s) still plans jobs:\n{output[-3000:]}")
            runs.append(round(seconds, 2))
        rows.append({"regions": n, "outputs": n_outputs, "dry_run_seconds": min(runs), "runs_seconds": runs})
    if completed is not None:  # a real run's folder: real outputs and provenance records
        workdir, configfile = completed
        runs = []
        for _ in range(repeats):
            seconds, output = snakemake(workdir, "--configfile", configfile, "--dry-run")
            if "Nothing to be done" not in output:
                raise SystemExit(f"bench: the dry run in {workdir} still plans jobs:\n{output[-3000:]}")
            runs.append(round(seconds, 2))
        n = len(yaml.safe_load((workdir / configfile).read_text())["regions"])
        rows.append(
            {
                "regions": n,
                "outputs": None,
                "completed_run": str(workdir),
                "dry_run_seconds": min(runs),
                "runs_seconds": runs,
            }
        )
    base = rows[0]["dry_run_seconds"]
    for r in rows:
        r["ratio_to_first"] = round(r["dry_run_seconds"] / base, 3)
    return {"benchmark": "dry_run_overhead", "rows": rows}
