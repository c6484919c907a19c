"""Faults: SIGKILL in the middle of a step, two runs at once, a full disk and a read-only results/.

Each kill lands while the step writes its output (its temporary file exists, or its first output is
complete but the others are not). The interrupted run fails, no partial file takes an output's name,
and the next ``snakemake`` call completes with outputs equal to those of an uninterrupted run (the
tiny run of ``conftest.tiny_run``, copied). Killing a job (the OOM killer, a cluster's time limit) is
handled by Snakemake itself: it removes the job's outputs. Killing Snakemake too leaves its lock:
the next call stops with the lock message, ``snakemake --unlock`` lifts it, and ``--rerun-incomplete``
(in the default profile) reruns the job whose outputs may be incomplete.

Training is covered by tests/test_train_workflow.py (the killed job resumes) and tests/test_train.py
(a resumed run has the metrics of an uninterrupted one).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import psutil
import pytest
import rasterio
import yaml

from tests.usgs_server import ServerState, served_bytes, tile_path
from tests.workflow_helpers import (
    REPO,
    job_processes,
    kill_during,
    snakemake,
    snakemake_command,
    write_config,
)

pytestmark = pytest.mark.workflow
LOCKED = "Directory cannot be locked"


def copy_of(tiny_run: Path, dest: Path, *remove: str) -> Path:
    """A copy of the completed tiny run (results and Snakemake's metadata), ``remove``d outputs deleted."""
    work = dest / "work"
    shutil.copytree(tiny_run, work, symlinks=True)
    for rel in remove:
        (work / rel).unlink()
    return work


def died(pid: int, within_s: float) -> bool:
    """Whether process ``pid`` is gone or a zombie within ``within_s`` seconds. A SIGKILL takes effect
    when the process is next scheduled: on a loaded machine a busy job can still show as running for a
    moment after the signal was sent."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*"))


def read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_a_killed_prediction_leaves_no_output_and_the_rerun_predicts_the_same(
    tiny_run: Path, tmp_path: Path
) -> None:
    target = "results/predictions/tiny_test.tif"
    work = copy_of(tiny_run, tmp_path, target)
    folder = work / "results" / "predictions"
    run = kill_during(
        work, [target, "--configfile", "tiny.yaml"], "predict.py", lambda: bool(temporaries(folder))
    )
    assert run.killed_pid is not None, run.stderr[-3000:]
    assert run.returncode != 0
    assert not (work / target).exists(), "no partial prediction under the output's name"
    assert temporaries(folder), "the kill interrupted the write (its temporary file is left)"

    snakemake(work, target, "--configfile", "tiny.yaml")
    assert temporaries(folder) == [], "the rerun removed the killed writer's temporary"
    assert np.array_equal(read_band(work / target), read_band(tiny_run / target))


def test_a_killed_run_keeps_its_lock_and_reruns_the_interrupted_job_after_unlock(
    tiny_run: Path, tmp_path: Path
) -> None:
    """SIGKILL of snakemake and its vectorize job after the cone layer is written, before the figures."""
    target = "results/cones/tiny_test.gpkg"
    work = copy_of(tiny_run, tmp_path, target)
    killed_at = time.time()
    run = kill_during(
        work, [target, "--configfile", "tiny.yaml"], "vectorize.py", (work / target).exists, whole_run=True
    )
    assert run.killed_pid is not None, run.stderr[-3000:]
    assert died(run.killed_pid, within_s=10), "the job outlived snakemake"

    locked = snakemake(work, target, "--configfile", "tiny.yaml", check=False)
    assert locked.returncode != 0 and LOCKED in locked.stderr and "--unlock" in locked.stderr
    snakemake(work, "--unlock", "--configfile", "tiny.yaml")
    rerun = snakemake(work, target, "--configfile", "tiny.yaml")
    assert "rule vectorize:" in rerun.stdout + rerun.stderr, "the incomplete job is rerun"
    figure = work / "results" / "figures" / "tiny_test" / "cone_map.png"
    assert figure.stat().st_mtime > killed_at, "every output of the interrupted job is new"
    got = gpd.read_file(work / target, layer="cones")
    expected = gpd.read_file(tiny_run / target, layer="cones")
    assert len(got) == len(expected)
    assert got.drop(columns="geometry").equals(expected.drop(columns="geometry"))
    assert got.geometry.geom_equals_exact(expected.geometry, tolerance=1e-6).all()


def test_a_killed_download_resumes_and_the_tile_is_whole(
    server: ServerState, served: tuple[ServerState, str], tmp_path: Path
) -> None:
    """SIGKILL of the download job mid-transfer: Snakemake's retry resumes the partial file (Range)."""
    _, base = served
    tile = "n20w156"
    server.faults[tile_path(tile)] = ["slow"]  # half the file, then nothing until released
    download = {"method": "staged", "staged_url": base, "timeout_s": 60, "retries": 0, "chunk_bytes": 4096}
    region = {"source": "usgs3dep", "bbox": [-155.5, 19.5, -155.4, 19.6], "resolution_m": 50}
    cfg = write_config(tmp_path, "c.yaml", {"regions": {"hill": region}, "download": download})
    cache = tmp_path / "resources" / "dem" / "tiles"
    part = cache / f".USGS_13_{tile}.tif.part"

    def half_written() -> bool:
        return part.exists() and part.stat().st_size >= 4096

    try:
        run = kill_during(
            tmp_path, ["results/dem/hill.tif", "--configfile", cfg], "download_tile.py", half_written
        )
    finally:
        server.release.set()
    assert run.killed_pid is not None, run.stderr[-3000:]
    # the rule's one retry resumed where the killed job stopped: the run completed
    assert run.returncode == 0, run.stderr[-3000:]
    ranges = server.gets(tile_path(tile))
    assert ranges[0] is None and len(ranges) == 2 and ranges[1].startswith("bytes=")
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) >= 4096
    assert (cache / f"USGS_13_{tile}.tif").read_bytes() == served_bytes(server, tile)
    assert temporaries(cache) == []
    assert read_band(tmp_path / "results" / "dem" / "hill.tif").size > 0
    assert "Nothing to be done" in snakemake(tmp_path, "results/dem/hill.tif", "--configfile", cfg).stderr


def test_a_second_run_at_once_stops_at_the_lock_and_the_first_is_unharmed(
    tiny_run: Path, tmp_path: Path
) -> None:
    prediction, cones = "results/predictions/tiny_test.tif", "results/cones/tiny_test.gpkg"
    work = copy_of(tiny_run, tmp_path, prediction, cones)  # the first run: predict, then vectorize
    with open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen(
            snakemake_command(work, cones, "--configfile", "tiny.yaml"), cwd=work, stdout=subprocess.DEVNULL,
            stderr=err, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not job_processes(first.pid, "predict.py") and first.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert first.poll() is None, "the first run ended before its predict job started"
            leader = psutil.Process(first.pid)
            leader.suspend()  # the first run holds its lock however fast its jobs are
            try:
                second = snakemake(work, cones, "--configfile", "tiny.yaml", check=False)
                assert first.poll() is None, "the second run must stop while the first still runs"
            finally:
                leader.resume()
            assert first.wait(timeout=300) == 0, (tmp_path / "first.err").read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert second.returncode != 0 and LOCKED in second.stderr
    assert "rule predict:" not in second.stdout + second.stderr, "the second run started no job"
    assert np.array_equal(read_band(work / prediction), read_band(tiny_run / prediction))
    assert len(gpd.read_file(work / cones, layer="cones")) == len(
        gpd.read_file(tiny_run / cones, layer="cones")
    )


# --- a full disk and a read-only results/ (a tmpfs of a few MB mounted over results/; needs root) -------


@pytest.fixture
def small_results(tmp_path: Path) -> Iterator[Path]:
    """A work directory whose results/ is a 4 MB tmpfs; skipped where mounting is not allowed."""
    results = tmp_path / "results"
    results.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(results)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", "-l", str(results)], check=True)


def fill(folder: Path, leave_bytes: int) -> Path:
    """Fill the file system of ``folder`` but ``leave_bytes``."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))
    return filler


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cinderseg: error:")]
    assert lines, proc.stderr[-3000:]
    return lines[0]


def test_a_full_disk_is_one_clear_error_and_leaves_nothing_half_written(small_results: Path) -> None:
    work = small_results
    tiny = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    cfg = write_config(work, "c.yaml", {"regions": {"tiny_test": tiny["regions"]["tiny_test"]}})
    snakemake(work, "results/dem/tiny_test.tif", "--configfile", cfg)
    filler = fill(work / "results", leave_bytes=48 * 1024)  # room for the log, not for the features

    line = one_error_line(snakemake(work, "results/features/tiny_test.tif", "--configfile", cfg, check=False))
    assert "cannot write results/features/tiny_test.tif: the disk is full" in line
    assert not (work / "results" / "features" / "tiny_test.tif").exists()
    assert temporaries(work / "results" / "features") == []

    filler.unlink()  # space freed: the same call completes
    snakemake(work, "results/features/tiny_test.tif", "--configfile", cfg)
    with rasterio.open(work / "results" / "features" / "tiny_test.tif") as ds:
        assert ds.count == 3 and np.isfinite(ds.read(masked=True)).all()


def test_a_read_only_results_folder_stops_before_any_job(small_results: Path) -> None:
    work = small_results
    tiny = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    cfg = write_config(work, "c.yaml", {"regions": {"tiny_test": tiny["regions"]["tiny_test"]}})
    subprocess.run(["mount", "-o", "remount,ro", str(work / "results")], check=True)
    line = one_error_line(snakemake(work, "results/dem/tiny_test.tif", "--configfile", cfg, check=False))
    assert "results/: cannot write in" in line and "Read-only file system" in line
    assert list((work / "results").iterdir()) == []
