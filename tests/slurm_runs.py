"""The SLURM runs of tests/test_slurm.py, started in the background when the session starts.

A run on the cluster takes minutes, most of them spent between Snakemake's status checks, so the
session starts the cluster and both runs at its first test (``tests/conftest.py``, when a test marked
``slurm`` is selected) and runs the other tests meanwhile; the SLURM tests run last and read the
finished runs. Under xdist the first worker to start a test starts them, in the session's shared
folder; the controller (or the single pytest process) stops them at the end of the session, also when
a test failed or a worker crashed.

The runs: the training region of config/tiny.yaml (every rule of a run, each job as a SLURM job,
compared with the local tiny run), and a corrupt DEM whose ``dem`` job fails and is resubmitted once.
Each run's folder holds snakemake's ``stdout``, ``stderr``, its exit status ``rc`` (written when it
ends) and ``pid`` (its process group).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from cinderseg.workflow import paths
from tests import slurm_cluster as cluster_lib
from tests.workflow_helpers import REPO, exclusive, snakemake_command, write_config

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
RUN_ID = re.compile(r"SLURM run ID: (\S+)")
RULE_BLOCK = re.compile(r"^(local)?rule (\w+):$", re.MULTILINE)
JOB_ID = re.compile(r"^\s+jobid: (\d+)$", re.MULTILINE)
# Threads per job: those of the local run it is compared with (tests/workflow_helpers.py: --cores 2).
LOCAL_CORES = 2
# The settings of a cluster without accounting storage (see profiles/slurm/config.yaml), and a
# 2-CPU node: at most 2 threads per job.
CLUSTER_ARGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "5",
    "--slurm-no-account",
    "--slurm-keep-successful-logs",
]
# The region of config/tiny.yaml that the cluster run maps (its training region: every rule runs).
REGION = "tiny_train"
FAILING_REGION = "vol"
RUN_TIMEOUT_S = 1200
UNAVAILABLE = "unavailable"  # the file that says why the cluster is not running
MISSING, FAILED = "missing", "failed"  # SLURM not installed (the tests skip outside CI) / not started
STARTED = "started"


@dataclass
class SlurmRun:
    """A finished ``snakemake --workflow-profile profiles/slurm`` run: its directory, output (stdout,
    then stderr) and return code."""

    workdir: Path
    returncode: int
    output: str

    def submissions(self) -> list[tuple[str, str, Path]]:
        """(Snakemake job id, SLURM job id, SLURM log) of every submitted job, in order."""
        return [(job, slurm, Path(log)) for job, slurm, log in SUBMITTED.findall(self.output)]

    def rules_of_jobs(self) -> dict[str, str]:
        """Snakemake job id -> rule name, for every job block the run printed (local ones too)."""
        rules: dict[str, str] = {}
        blocks = list(RULE_BLOCK.finditer(self.output))
        for i, block in enumerate(blocks):
            end = blocks[i + 1].start() if i + 1 < len(blocks) else len(self.output)
            job = JOB_ID.search(self.output, block.end(), end)
            if job:
                rules[job.group(1)] = ("local:" if block.group(1) else "") + block.group(2)
        return rules

    def run_id(self) -> str:
        match = RUN_ID.search(self.output)
        assert match, self.output[-3000:]
        return match.group(1)


def cluster_root(shared: Path) -> Path:
    return shared / "cluster"


def _prepare_tiny(work: Path) -> list[str]:
    """config/tiny.yaml with its training region only; the snakemake arguments of the run."""
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    cfg["regions"] = {REGION: cfg["regions"][REGION]}
    return ["--configfile", write_config(work, "tiny_train.yaml", cfg)]


def _prepare_failing(work: Path) -> list[str]:
    """A corrupt DEM: the dem job fails on the cluster, is resubmitted once (--retries 1), fails again."""
    (work / "dem.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    region = {"source": "file", "dem": "dem.tif", "role": "predict", "resolution_m": 30}
    config = write_config(work, "bad.yaml", {"regions": {FAILING_REGION: region}})
    return ["--configfile", config, "--retries", "1", paths.DEM.format(region=FAILING_REGION)]


RUNS = {"tiny": _prepare_tiny, "failing": _prepare_failing}


def _start_run(work: Path, cluster: cluster_lib.Cluster, args: list[str]) -> None:
    """snakemake --workflow-profile profiles/slurm in ``work`` on the repo's Snakefile, in the
    background (its own process group); ``rc`` is written when it ends."""
    threads = ["--max-threads", str(LOCAL_CORES)]
    cmd = snakemake_command(work, *CLUSTER_ARGS, *threads, *args, profile="slurm", cores=None)
    script = '"$@" > stdout 2> stderr; echo $? > rc.tmp && mv rc.tmp rc'
    proc = subprocess.Popen(
        ["/bin/sh", "-c", script, "sh", *cmd], cwd=work, env=cluster.env, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    (work / "pid").write_text(f"{proc.pid}\n")
    (work / "started_at").write_text(f"{time.time()}\n")


def start(shared: Path) -> None:
    """Start the cluster and the runs in ``shared`` unless a process of this session already did, or
    found SLURM missing or failing to start (the reason kept in ``shared/unavailable``)."""
    shared.mkdir(parents=True, exist_ok=True)
    with exclusive(shared / "lock"):
        if (shared / STARTED).exists() or (shared / UNAVAILABLE).exists():
            return
        missing = cluster_lib.missing_commands()
        if missing:
            _unavailable(shared, MISSING, f"SLURM not installed (missing {', '.join(missing)})")
            return
        try:
            cluster = cluster_lib.start(cluster_root(shared))
            for name, prepare in RUNS.items():
                work = shared / name
                work.mkdir()
                _start_run(work, cluster, prepare(work))
        except (cluster_lib.ClusterError, OSError, subprocess.SubprocessError) as err:
            _unavailable(shared, FAILED, f"the test cluster or its runs did not start: {err}")
            stop(shared)
            return
        (shared / STARTED).touch()


def _unavailable(shared: Path, kind: str, reason: str) -> None:
    (shared / UNAVAILABLE).write_text(json.dumps({"kind": kind, "reason": reason}))


def unavailable(shared: Path) -> tuple[str, str] | None:
    """Why the cluster is not running: (MISSING or FAILED, the reason), None if it runs."""
    path = shared / UNAVAILABLE
    if not path.exists():
        return None
    found = json.loads(path.read_text())
    return found["kind"], found["reason"]


def cluster(shared: Path) -> cluster_lib.Cluster:
    """The running cluster of this session (its daemons' PIDs from its folder)."""
    return cluster_lib.from_pids(cluster_root(shared))


def result(shared: Path, name: str) -> SlurmRun:
    """Run ``name`` once it has ended (at most RUN_TIMEOUT_S after its start; then it is killed)."""
    work = shared / name
    started = float((work / "started_at").read_text())
    while not (work / "rc").exists():
        if time.time() > started + RUN_TIMEOUT_S:
            _kill(work)
            raise AssertionError(
                f"SLURM run {name} still running after {RUN_TIMEOUT_S} s: {_output(work)[-3000:]}"
            )
        time.sleep(1)
    output = _output(work)
    (work / "snakemake.out").write_text(output)
    return SlurmRun(workdir=work, returncode=int((work / "rc").read_text()), output=output)


def _output(work: Path) -> str:
    return "\n".join(
        (work / f).read_text(errors="replace") for f in ("stdout", "stderr") if (work / f).exists()
    )


def _kill(work: Path) -> None:
    """SIGKILL the run's process group (snakemake, its sh parent, its sbatch/squeue calls)."""
    pid_file = work / "pid"
    if pid_file.exists() and not (work / "rc").exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop(shared: Path) -> None:
    """End what :func:`start` started in ``shared``: runs still going, then the cluster (its jobs
    cancelled, its daemons stopped by PID, its config removed)."""
    for name in RUNS:
        _kill(shared / name)
    if (cluster_root(shared) / "pids").exists():
        cluster_lib.stop(cluster(shared))
