"""Running the Snakemake workflow from tests: in a scratch working directory, on this repo's Snakefile."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from cinderseg.workflow import paths

REPO = Path(__file__).resolve().parent.parent
JOB_LINE = re.compile(r"^(?:local)?rule (\w+):$")
WILDCARDS_LINE = re.compile(r"^\s+wildcards: (.*)$")


def shared_path(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """``name`` in the folder of this test session that every xdist worker sees (the session's base
    temporary folder; under xdist, the parent of the workers' own)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (created if missing) across processes."""
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def job_processes(snakemake_pid: int, script: str) -> list[psutil.Process]:
    """The running jobs of a snakemake process whose script is ``script`` (e.g. ``predict.py``)."""
    found = []
    try:
        children = psutil.Process(snakemake_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for p in children:
        with contextlib.suppress(psutil.Error):
            if any(part.endswith(f".{script}") for part in p.cmdline()):
                found.append(p)
    return found


@dataclass
class Interrupted:
    """What :func:`kill_during` saw: the exit status and stderr of snakemake, and the job it killed."""

    returncode: int
    stderr: str
    killed_pid: int | None


def kill_during(
    workdir: Path,
    args: Sequence[str],
    script: str,
    ready: Callable[[], bool],
    *,
    whole_run: bool = False,
    timeout_s: float = 300,
) -> Interrupted:
    """Run snakemake; as soon as ``ready()`` holds while a job of ``script`` runs, SIGKILL that job.

    ``whole_run``: SIGKILL snakemake itself and its jobs together (its process group), as a lost
    login node or ``kill -9`` of the run would; else only the job, as the OOM killer or a cluster's
    time limit would.
    """
    with tempfile.TemporaryFile(mode="w+") as err:  # a file: a pipe left unread would block snakemake
        proc = subprocess.Popen(
            snakemake_command(workdir, *args), cwd=workdir, stdout=subprocess.DEVNULL, stderr=err,
            text=True, start_new_session=True,
        )  # fmt: skip
        killed = None
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and proc.poll() is None:
                jobs = job_processes(proc.pid, script)
                if jobs and ready():
                    killed = jobs[0].pid
                    if whole_run:
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:
                        os.kill(killed, signal.SIGKILL)
                    break
                time.sleep(0.01)
            proc.wait(timeout=timeout_s)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        err.seek(0)
        stderr = err.read()
    return Interrupted(proc.returncode, stderr, killed)


def output(workdir: Path, template: str, **wildcards: str) -> Path:
    """A file the workflow makes in ``workdir``: a template of :mod:`cinderseg.workflow.paths`
    (e.g. ``paths.DEM``) with its wildcards filled in."""
    return workdir / template.format(**wildcards)


def log_file(workdir: Path, step: str, name: str) -> Path:
    """The log of one job of ``step`` in ``workdir`` (``paths.log``)."""
    return workdir / paths.log(step, name)


def benchmark_file(workdir: Path, step: str, name: str) -> Path:
    """The benchmark table of one job of ``step`` in ``workdir`` (``paths.benchmark``)."""
    return workdir / paths.benchmark(step, name)


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
