"""Snakemake profiles: the workstation default, SLURM and its GPU variant (no scheduler needed here).

Dry runs of config/tiny.yaml through each profile show what every job would ask sbatch for.
"""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import requires, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.workflow_helpers import REPO, snakemake_command

PROFILES = REPO / "profiles"
# The rules that run TensorFlow, on a GPU under the GPU profile.
TENSORFLOW_RULES = {"train", "predict", "crossval_train", "crossval_predict", "tile_predict"}
JOB = re.compile(r"^rule (\w+):\n((?:    .*\n)+)", re.MULTILINE)


def profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def dry_run_resources(tmp_path: Path, name: str, crossval: bool = False) -> dict[str, list[dict[str, str]]]:
    """rule -> the resources (and threads) of each of its jobs in a dry run of tiny.yaml (with two
    spatial folds, whose jobs join the default target, if ``crossval``)."""
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    if crossval:
        cfg["crossval"] = {"spatial_folds": {"tiny_test": {"rows": 1, "cols": 2, "gap_m": 300}}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    # A dry run caps threads at 1 core unless told; a cluster run has no cap.
    cmd = snakemake_command(tmp_path, "--configfile", "tiny.yaml", "--dry-run", profile=name, cores=64)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs: dict[str, list[dict[str, str]]] = {}
    for match in JOB.finditer(proc.stdout + proc.stderr):
        fields = dict(re.findall(r"^    (\w+): (.*)$", match.group(2), re.MULTILINE))
        res = dict(kv.split("=", 1) for kv in fields["resources"].split(", "))
        res["threads"] = fields.get("threads", "1")
        jobs.setdefault(match.group(1), []).append(res)
    return jobs


def test_default_profile_is_the_workstation_one() -> None:
    cfg = profile("default")
    assert cfg["cores"] == "all" and "executor" not in cfg
    assert cfg["rerun-incomplete"] and cfg["printshellcmds"] and cfg["show-failed-logs"]


def test_the_slurm_plugin_is_pinned_and_fits_the_installed_snakemake() -> None:
    pins = dict(
        line.split("==") for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line
    )
    for dist in ("snakemake-executor-plugin-slurm", "snakemake-executor-plugin-slurm-jobstep"):
        assert version(dist) == pins[dist], dist
        for req in map(Requirement, requires(dist) or []):
            if req.name.startswith("snakemake") and req.marker is None:
                assert req.specifier.contains(version(req.name)), f"{dist} needs {req}"
    assert profile("slurm")["executor"] == "slurm"


def test_gpu_profile_is_the_slurm_profile_plus_gpus_for_the_tensorflow_steps() -> None:
    cpu, gpu = profile("slurm"), profile("slurm-gpu")
    overrides = gpu.pop("set-resources")
    assert gpu == cpu
    assert set(overrides) == TENSORFLOW_RULES
    for resources in overrides.values():
        assert resources["gpu"] == 1 and resources["slurm_partition"] == "gpu"


def test_slurm_profile_asks_for_each_rules_threads_memory_and_runtime(tmp_path: Path) -> None:
    jobs = dry_run_resources(tmp_path, "slurm")
    assert {"synthetic_dem", "features", "train", "predict", "metrics_summary"} <= set(jobs)
    set_threads = profile("slurm")["set-threads"]
    for rule, runs in jobs.items():
        for res in runs:
            assert res["slurm_partition"] == "cpu", rule
            assert res["cpus_per_task"] == res["threads"] == str(set_threads.get(rule, 1)), rule
            assert int(res["mem_mb"]) > 0 and int(res["runtime"]) > 0, rule
    assert jobs["train"][0]["mem_mb"] != profile("slurm")["default-resources"]["mem_mb"], (
        "train sizes its own"
    )


def test_gpu_profile_puts_the_tensorflow_steps_on_a_gpu(tmp_path: Path) -> None:
    jobs = dry_run_resources(tmp_path, "slurm-gpu", crossval=True)
    assert TENSORFLOW_RULES - {"tile_predict"} <= set(jobs)  # tile_predict: tests/test_maptiles.py
    for rule, runs in jobs.items():
        for res in runs:
            if rule in TENSORFLOW_RULES:
                assert (res["slurm_partition"], res["gpu"]) == ("gpu", "1"), rule
            else:
                assert res["slurm_partition"] == "cpu" and "gpu" not in res, rule


@pytest.mark.parametrize("name", ["slurm", "slurm-gpu"])
def test_status_command_advice_matches_the_plugin(name: str) -> None:
    """The options the profile documents for clusters without accounting exist in the plugin."""
    text = (PROFILES / name / "config.yaml").read_text()
    from snakemake_executor_plugin_slurm import ExecutorSettings

    fields = set(ExecutorSettings.__dataclass_fields__)
    for option in re.findall(r"^# (slurm-[\w-]+):", text, re.MULTILINE):
        assert option.removeprefix("slurm-").replace("-", "_") in fields, option
    assert "# slurm-status-command: squeue" in text
