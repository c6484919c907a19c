"""The workflow on a real SLURM scheduler, through ``--workflow-profile profiles/slurm``.

A single-node cluster (tests/slurm_cluster.py: Debian's slurmctld, slurmd and munge on 127.0.0.1)
and two runs on it, the training region of config/tiny.yaml and a rule that fails, are started in the
background when the session starts and stopped by PID when it ends, also when a test fails
(tests/slurm_runs.py); these tests run last and check the finished runs. Without SLURM installed they
skip, except under CI (CI=true), where they fail: `make test` installs SLURM as root.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio

from cinderseg.workflow import paths
from tests import slurm_cluster as cluster_lib
from tests import slurm_runs
from tests.slurm_runs import JOB_ID, LOCAL_CORES, REGION, RULE_BLOCK, SlurmRun
from tests.workflow_helpers import log_file, output, shared_path

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def slurm_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's SLURM folder (tests/slurm_runs.py); skips, or fails under CI, without SLURM."""
    shared = shared_path(tmp_path_factory, "slurm")
    unavailable = slurm_runs.unavailable(shared)
    if unavailable is not None:
        kind, reason = unavailable
        if kind == slurm_runs.MISSING and os.environ.get("CI", "").lower() != "true":
            pytest.skip(f"{reason}: `make test` as root installs it")
        pytest.fail(reason)
    return shared


@pytest.fixture(scope="module")
def slurm_cluster(slurm_shared: Path) -> cluster_lib.Cluster:
    """The single-node SLURM cluster of the session."""
    return slurm_runs.cluster(slurm_shared)


@pytest.fixture(scope="module")
def slurm_tiny_run(slurm_shared: Path) -> SlurmRun:
    """The training region of config/tiny.yaml, run to completion through SLURM."""
    run = slurm_runs.result(slurm_shared, "tiny")
    assert run.returncode == 0, run.output[-6000:]
    return run


def squeue_jobs(cluster: cluster_lib.Cluster, run_id: str) -> dict[str, dict[str, str]]:
    """SLURM job id -> state, memory, time limit and CPUs of the jobs named ``run_id`` that the
    controller still holds (finished jobs for MinJobAge seconds)."""
    proc = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T|%m|%l|%C", "--name", run_id],
        capture_output=True,
        text=True,
        env=cluster.env,
        check=True,
    )
    jobs = {}
    for line in proc.stdout.split():
        job, state, memory, time_limit, cpus = line.split("|")
        jobs[job] = {"state": state, "memory": memory, "time_limit": time_limit, "cpus": cpus}
    return jobs


def slurm_time(minutes: int) -> str:
    """A time limit as squeue prints it: M:SS, H:MM:SS or D-HH:MM:SS."""
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{mins:02d}:00"
    return f"{hours}:{mins:02d}:00" if hours else f"{mins}:00"


def requested(run: SlurmRun) -> dict[str, dict[str, str]]:
    """Snakemake job id -> the resources Snakemake printed for it (threads and outputs included)."""
    blocks = list(RULE_BLOCK.finditer(run.output))
    result = {}
    for i, block in enumerate(blocks):
        end = blocks[i + 1].start() if i + 1 < len(blocks) else len(run.output)
        text = run.output[block.end() : end]
        job, resources = JOB_ID.search(text), re.search(r"^\s+resources: (.*)$", text, re.MULTILINE)
        if job and resources:
            threads = re.search(r"^\s+threads: (\d+)$", text, re.MULTILINE)
            outputs = re.search(r"^\s+output: (.*)$", text, re.MULTILINE)
            result[job.group(1)] = dict(kv.split("=", 1) for kv in resources.group(1).split(", "))
            result[job.group(1)]["threads"] = threads.group(1) if threads else "1"
            result[job.group(1)]["output"] = outputs.group(1) if outputs else ""
    return result


def test_every_job_but_the_local_ones_ran_as_a_slurm_job(
    slurm_tiny_run: SlurmRun, slurm_cluster: cluster_lib.Cluster
) -> None:
    rules = slurm_tiny_run.rules_of_jobs()
    submitted = slurm_tiny_run.submissions()
    remote = {job for job, rule in rules.items() if not rule.startswith("local:")}
    # one job per rule: the run maps one region
    assert {job for job, _, _ in submitted} == remote and len(submitted) == len(remote) == 11
    assert {rule for rule in rules.values() if rule.startswith("local:")} == {"local:all"}
    assert {rules[job] for job in remote} == {
        "synthetic_dem", "mask", "features", "tiles", "overview", "train",
        "predict", "vectorize", "baseline", "evaluate", "metrics_summary",
    }  # fmt: skip
    slurm_ids = {slurm for _, slurm, _ in submitted}
    assert len(slurm_ids) == len(submitted)
    # The controller knows every one of them, under this run's name, as completed, with the
    # memory, time limit and CPUs of its rule.
    jobs = squeue_jobs(slurm_cluster, slurm_tiny_run.run_id())
    asked = requested(slurm_tiny_run)
    for job, slurm, _ in submitted:
        res = asked[job]
        assert jobs[slurm] == {
            "state": "COMPLETED",
            "memory": f"{res['mem_mb']}M",
            "time_limit": slurm_time(int(res["runtime"])),
            "cpus": res["threads"],
        }, rules[job]
    assert {asked[job]["threads"] for job, _, _ in submitted if rules[job] == "train"} == {str(LOCAL_CORES)}
    # Snakemake saw each job finish, and each job's SLURM log shows the job step that ran exactly that
    # job (its rule, and its outputs), finishing: inside the SLURM job, Snakemake runs that job only,
    # as its job 0.
    for job, slurm, log in submitted:
        rule, text = rules[job], log.read_text()
        assert f"Finished jobid: {job} (Rule: {rule})" in slurm_tiny_run.output
        assert log.name == f"{slurm}.log" and f"rule_{rule}" in log.parts
        step = re.search(rf"^localrule {rule}:\n((?:    .*\n)+)", text, re.MULTILINE)
        assert step and f"    output: {asked[job]['output']}\n" in step.group(1), text[-2000:]
        assert f"Finished jobid: 0 (Rule: {rule})" in text, text[-2000:]


def _same_raster(a: Path, b: Path) -> None:
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        assert (ra.crs, ra.transform, ra.shape, ra.count, ra.dtypes, ra.nodata) == (
            rb.crs, rb.transform, rb.shape, rb.count, rb.dtypes, rb.nodata,
        ), a  # fmt: skip
        assert ra.descriptions == rb.descriptions
        np.testing.assert_array_equal(ra.read(), rb.read(), err_msg=str(a))


def _same_vectors(a: Path, b: Path) -> None:
    ga, gb = gpd.read_file(a), gpd.read_file(b)
    assert ga.crs == gb.crs and list(ga.columns) == list(gb.columns), a
    pd.testing.assert_frame_equal(ga.drop(columns="geometry"), gb.drop(columns="geometry"), check_exact=True)
    assert ga.geometry.to_wkb().tolist() == gb.geometry.to_wkb().tolist(), a


def test_gis_outputs_are_identical_to_a_local_run(slurm_tiny_run: SlurmRun, tiny_run: Path) -> None:
    """Everything before training is deterministic: the cluster run must reproduce it exactly."""
    here, there = tiny_run, slurm_tiny_run.workdir
    for region in (REGION,):
        for template in (paths.DEM, paths.MASK, paths.FEATURES):
            _same_raster(output(here, template, region=region), output(there, template, region=region))
        for template in (paths.SYNTHETIC_CONES, paths.BASELINE):
            _same_vectors(output(here, template, region=region), output(there, template, region=region))
        assert (
            output(here, paths.MANIFEST, region=region).read_bytes()
            == output(there, paths.MANIFEST, region=region).read_bytes()
        )
        with (
            np.load(output(here, paths.TILES, region=region)) as a,
            np.load(output(there, paths.TILES, region=region)) as b,
        ):
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
        ma = json.loads(output(here, paths.METRICS, region=region).read_text())
        mb = json.loads(output(there, paths.METRICS, region=region).read_text())
        assert ma["baseline"] == mb["baseline"], "the classical detector's accuracy is deterministic"


def test_model_outputs_agree_with_a_local_run(slurm_tiny_run: SlurmRun, tiny_run: Path) -> None:
    """Training is seeded, and with the same TensorFlow threads (2 here and in the local run) the
    cluster's model learns the same: measured identical histories and probability maps. TensorFlow
    does not promise bitwise reproducibility across processes, so metrics and probabilities are
    compared to 1e-4 (a different model would differ by far more), the cones by count and outline.
    Timings (seconds, tiles/s, wall time) differ, and model.keras embeds its save time."""
    here, there = tiny_run, slurm_tiny_run.workdir
    ca, cb = (
        json.loads(output(d, paths.MODEL_FILE, model="unet", file="model_card.json").read_text())
        for d in (here, there)
    )
    for key in (
        "training_regions",
        "tiles",
        "channels",
        "tile_size",
        "data_fingerprint",
        "epochs_run",
        "threads",
    ):
        assert ca[key] == cb[key], key
    ha, hb = (
        pd.read_csv(output(d, paths.MODEL_FILE, model="unet", file="history.csv")) for d in (here, there)
    )
    timing = ["seconds", "tiles_per_s"]
    pd.testing.assert_frame_equal(ha.drop(columns=timing), hb.drop(columns=timing), rtol=1e-4)
    for region in (REGION,):
        a, b = (output(d, paths.PROBABILITY, region=region) for d in (here, there))
        with rasterio.open(a) as ra, rasterio.open(b) as rb:
            assert (ra.crs, ra.transform, ra.shape) == (rb.crs, rb.transform, rb.shape)
            pa, pb = ra.read(1, masked=True), rb.read(1, masked=True)
        assert (pa.mask == pb.mask).all()
        np.testing.assert_allclose(pa.filled(0), pb.filled(0), atol=1e-4, err_msg=region)
        cones_a, cones_b = (gpd.read_file(output(d, paths.CONES, region=region)) for d in (here, there))
        assert len(cones_a) == len(cones_b), region
        if len(cones_a):
            moved = cones_a.geometry.symmetric_difference(cones_b.geometry).area.sum()
            assert moved <= 1e-3 * cones_a.area.sum(), region


def test_a_failing_rule_fails_the_run_with_its_log_and_is_retried(
    slurm_cluster: cluster_lib.Cluster, slurm_shared: Path
) -> None:
    """A corrupt DEM fails the dem job on the cluster: resubmitted once (--retries 1), then the run
    fails naming the rule's log, which holds the one-line cinderseg error (tests/slurm_runs.py)."""
    run = slurm_runs.result(slurm_shared, "failing")
    assert run.returncode != 0
    submitted = run.submissions()
    assert len(submitted) == 2, run.output[-4000:]
    assert all(log.parts[-3:-1] == ("rule_dem", "vol") for _, _, log in submitted)
    assert len({slurm for _, slurm, _ in submitted}) == 2
    jobs = squeue_jobs(slurm_cluster, run.run_id())
    assert [jobs[slurm]["state"] for _, slurm, _ in submitted] == ["FAILED"] * 2
    # The retry asks for twice the memory and time (rules/common.smk: per_attempt).
    assert [(jobs[slurm]["memory"], jobs[slurm]["time_limit"]) for _, slurm, _ in submitted] == [
        ("2000M", "30:00"),
        ("4000M", "1:00:00"),
    ]
    # The run names the rule's log and each attempt's SLURM log, and prints them (show-failed-logs):
    # the job's one-line error is in the output.
    assert "Trying to restart job" in run.output and "Error in rule dem" in run.output
    assert f"log: {paths.log('dem', 'vol')}, {submitted[-1][2]}" in run.output
    assert "cinderseg: error: DEM of region 'vol': not a readable raster: dem.tif" in run.output
    log = log_file(run.workdir, "dem", "vol").read_text()
    assert "ERROR cinderseg: DEM of region 'vol': not a readable raster: dem.tif" in log
    assert not output(run.workdir, paths.DEM, region="vol").exists()
