"""Running a step: atomic writes, one-line errors for bad input and for writes that cannot succeed."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cinderseg.core.errors import ConfigError, InputError, OutputError, write_failure
from cinderseg.core.raster import atomic_write, remove_stale_temporaries
from cinderseg.core.step import cpu_seconds, job_cpu_seconds, run_step
from cinderseg.workflow.config import check_input_files, check_writable, validate_config
from tests.workflow_helpers import REPO, benchmark_file, log_file


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_atomic_write_renames_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "out.tif"
    with atomic_write(final) as tmp:
        assert tmp.parent == final.parent and tmp.suffix == ".tif" and tmp.name.startswith(".out.tmp")
        tmp.write_text("whole")
    assert final.read_text() == "whole"
    with pytest.raises(RuntimeError), atomic_write(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed halfway")
    assert final.read_text() == "whole" and sorted(p.name for p in final.parent.iterdir()) == ["out.tif"]


def test_temporaries_of_killed_writers_are_removed_but_not_those_of_live_ones(tmp_path: Path) -> None:
    final = tmp_path / "out.tif"
    stale = tmp_path / f".out.tmp{dead_pid()}.tif"
    live = tmp_path / f".out.tmp{os.getppid()}.tif"  # our parent runs
    other = tmp_path / f".other.tmp{dead_pid()}.tif"
    for p in (stale, live, other):
        p.write_text("x")
    assert remove_stale_temporaries(final) == [stale]
    assert live.exists() and other.exists()
    with atomic_write(other.with_name("other.tif")) as tmp:
        tmp.write_text("new")
    assert not other.exists()


@pytest.mark.parametrize(
    ("code", "start", "advice"),
    [
        (errno.ENOSPC, "cannot write", "free some disk space"),
        (errno.EROFS, "cannot write", "read-only"),
        (errno.EACCES, "cannot access", "permissions"),
    ],
)
def test_write_failures_are_named(code: int, start: str, advice: str) -> None:
    assert write_failure(RuntimeError("not an I/O error")) is None
    try:
        raise RuntimeError("while writing") from OSError(code, os.strerror(code), "results/x.tif")
    except RuntimeError as wrapped:
        failure = write_failure(wrapped)
    assert isinstance(failure, OutputError)
    message = str(failure)
    assert message.startswith(f"{start} results/x.tif: {os.strerror(code)}") and advice in message


def test_a_failed_write_on_a_disk_with_room_is_not_called_a_full_disk(tmp_path: Path) -> None:
    assert write_failure(OSError("GDAL write error"), tmp_path / "x.tif") is None
    assert write_failure(ValueError("a bug"), tmp_path / "x.tif") is None


def test_run_step_turns_errors_into_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def bad_input() -> None:
        raise InputError("DEM of region 'x': file is empty (0 bytes): dem.tif")

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for func, expected in [
        (bad_input, "DEM of region 'x'"),
        (disk_full, "cannot write an output: No space left"),
    ]:
        with pytest.raises(SystemExit) as info:
            run_step(tmp_path / "step.log", func)
        assert info.value.code == 1
        err = capsys.readouterr().err
        assert f"cinderseg: error: {expected}" in err and "Traceback" not in err

    def bug() -> None:
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        run_step(tmp_path / "step.log", bug)
    assert run_step(tmp_path / "step.log", lambda: 42) == 42


def test_check_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_writable(["results", "resources"], base=tmp_path)  # neither exists: their parent is checked
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "results").mkdir()
    check_writable(["results"], base=tmp_path)
    assert list((tmp_path / "results").iterdir()) == []

    def read_only(**kwargs: object) -> None:  # as root, permissions cannot make a folder unwritable
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("cinderseg.workflow.config.tempfile.TemporaryFile", read_only)
    with pytest.raises(ConfigError, match=r"results/: cannot write in .*results \(Read-only file system\)"):
        check_writable(["results"], base=tmp_path)


def test_the_weights_file_and_the_model_card_are_checked_at_start_up(tmp_path: Path) -> None:
    region = {"source": "synthetic", "role": "train", "labels": "synthetic"}
    cfg = validate_config(
        {"regions": {"a": region}, "model": {"encoder": "hed_vgg16", "encoder_weights": "w.h5"}}
    )
    with pytest.raises(ConfigError, match=r"c\.yaml: model\.encoder_weights: weights file not found: w\.h5"):
        check_input_files(cfg, source="c.yaml", base=tmp_path)
    (tmp_path / "w.h5").write_bytes(b"x")
    check_input_files(cfg, source="c.yaml", base=tmp_path)
    plain = validate_config(
        {"regions": {"a": region}, "model": {"encoder": "unet_small", "encoder_weights": "w2.h5"}}
    )
    check_input_files(plain, source="c.yaml", base=tmp_path)  # unet_small has no encoder weights

    predict = validate_config(
        {"regions": {"p": {"source": "file", "dem": "d.tif"}}, "predict": {"model": "m/m.keras"}}
    )
    (tmp_path / "d.tif").write_bytes(b"x")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "m.keras").write_bytes(b"x")
    with pytest.raises(
        ConfigError, match=r"predict\.model: model card not found beside the model: m/model_card\.json"
    ):
        check_input_files(predict, source="c.yaml", base=tmp_path)
    (tmp_path / "m" / "model_card.json").write_text("{}")
    check_input_files(predict, source="c.yaml", base=tmp_path)


BURN_SNAKEFILE = """
from cinderseg.workflow import paths
from cinderseg.workflow.benchmark import count_all_cpu_time

count_all_cpu_time()


rule burn:
    output:
        "results/burn/{seconds}.txt",
    log:
        paths.log("burn", "{seconds}"),
    benchmark:
        paths.benchmark("burn", "{seconds}")
    threads: 2
    script:
        "burn.py"
"""
BURN_SCRIPT = """
import hashlib, threading, time
from cinderseg.core.step import run_step

AFTER_S = 1.5


def burn(out: str, seconds: float, threads: int) -> None:
    used = []

    def work() -> None:  # hashlib releases the GIL on large buffers: the threads run in parallel
        # busy for `seconds`, then until this thread's own CPU clock has run AFTER_S more seconds
        # (however long a loaded machine takes to give them)
        block, mark = b"x" * (1 << 20), time.monotonic() + seconds
        while time.monotonic() < mark:
            hashlib.sha256(block).digest()
        at_mark = time.thread_time()
        while time.thread_time() < at_mark + AFTER_S:
            hashlib.sha256(block).digest()
        used.append((time.thread_time(), time.thread_time() - at_mark))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    open(out, "w").write(f"{sum(u for u, _ in used)} {sum(a for _, a in used)}")


run_step(snakemake.log[0], burn, snakemake.output[0], float(snakemake.wildcards.seconds), snakemake.threads)
"""


@pytest.mark.workflow
def test_the_benchmark_counts_every_cpu_second_of_a_multithreaded_job(tmp_path: Path) -> None:
    """Snakemake samples a job's processes every 0.5 s for 15 s, then every 30 s, so the CPU time of
    a job after its 15th second was lost. Every second of both busy threads counts now: each thread
    burns for 15 s, then for 1.5 s more of its own CPU clock, 3 s after the 15th second of the job
    in all, however loaded the machine is; the threads' own CPU clocks are the reference here, as
    other processes on a shared machine may hold a core for a while. On 2 free cores cpu_time is
    about 2 x the wall time."""
    (tmp_path / "Snakefile").write_text(BURN_SNAKEFILE)
    (tmp_path / "burn.py").write_text(BURN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "results/burn/15.txt"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(benchmark_file(tmp_path, "burn", "15"), sep="\t")
    cpu_time, wall = table["cpu_time"].iloc[0], table["s"].iloc[0]
    threads_cpu, after_mark = map(float, (tmp_path / "results" / "burn" / "15.txt").read_text().split())
    assert cpu_time == pytest.approx(job_cpu_seconds(log_file(tmp_path, "burn", "15")))
    assert wall > 15 and after_mark >= 3.0, "both threads busy after the job's 15th second"
    assert cpu_time >= threads_cpu, "every CPU second of both threads, those after the 15th too"
    if threads_cpu >= 1.6 * wall:  # the threads had 2 cores to themselves
        assert cpu_time >= 1.5 * wall


def test_cpu_seconds_count_threads_and_ended_children(tmp_path: Path) -> None:
    before = cpu_seconds()
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    assert cpu_seconds() - before > 0.05
    log = tmp_path / "step.log"
    run_step(log, lambda: None)
    assert job_cpu_seconds(log) == pytest.approx(cpu_seconds(), abs=0.5)
    assert job_cpu_seconds(tmp_path / "none.log") is None
