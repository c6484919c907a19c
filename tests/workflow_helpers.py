"""Running the Snakemake workflow from tests: in a scratch working directory, on this repo's Snakefile."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
JOB_LINE = re.compile(r"^(?:local)?rule (\w+):$")
WILDCARDS_LINE = re.compile(r"^\s+wildcards: (.*)$")


def snakemake_command(
    workdir: Path, *args: str, profile: str = "default", cores: int | None = 2
) -> list[str]:
    """The snakemake command line for the repo's Snakefile in ``workdir`` with ``profiles/<profile>``
    as the workflow profile (``cores`` None: no --cores, as on a cluster)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    cmd += ["--workflow-profile", str(REPO / "profiles" / profile), "--directory", str(workdir)]
    return cmd + (["--cores", str(cores)] if cores is not None else []) + list(args)


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run snakemake on the repo's Snakefile in ``workdir`` with the repo's workflow profile."""
    cmd = snakemake_command(workdir, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def write_config(workdir: Path, name: str, cfg: dict[str, Any]) -> str:
    (workdir / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return name


def planned_jobs(workdir: Path, configfile: str) -> set[tuple[str, str]]:
    """(rule, region) of every job a dry run would execute (region '' for jobs without one)."""
    proc = snakemake(workdir, "--dry-run", "--configfile", configfile)
    jobs: set[tuple[str, str]] = set()
    rule: str | None = None
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        match = JOB_LINE.match(line.strip())
        if match:
            if rule is not None:
                jobs.add((rule, ""))
            rule = match.group(1)
            continue
        wildcards = WILDCARDS_LINE.match(line)
        if wildcards and rule is not None:
            values = dict(part.split("=", 1) for part in wildcards.group(1).split(", "))
            jobs.add((rule, values.get("region", "")))
            rule = None
    if rule is not None:
        jobs.add((rule, ""))
    return jobs
