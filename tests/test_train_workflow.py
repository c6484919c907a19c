"""The train rule in the workflow: resume after the training job is killed, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from cinderseg.nn.model import load_model
from cinderseg.workflow import paths
from tests.workflow_helpers import REPO, log_file, output, snakemake, write_config

pytestmark = pytest.mark.workflow
TINY = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
MODEL_CARD = paths.MODEL_FILE.format(model="resumable", file="model_card.json")


def training_config(**train: object) -> dict:
    """The tiny config's training region only, with the tiny model."""
    return {
        "regions": {"tiny_train": TINY["regions"]["tiny_train"]},
        "tiling": TINY["tiling"],
        "model": {**TINY["model"], "name": "resumable"},
        "train": {**TINY["train"], **train},
    }


def test_a_killed_training_job_resumes_on_the_next_snakemake_call(tmp_path: Path) -> None:
    """Both snakemake calls ask for the model (the steps after training are not part of this)."""
    configfile = write_config(tmp_path, "c.yaml", training_config(epochs=8, early_stopping_patience=20))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--workflow-profile",
           str(REPO / "profiles" / "default"), "--directory", str(tmp_path), "--cores", "2",
           MODEL_CARD, "--configfile", configfile]  # fmt: skip
    model_dir = output(tmp_path, paths.MODEL_DIR, model="resumable")
    state = model_dir.with_name("resumable.state") / "state.json"
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed_pid = None
    try:
        deadline = time.monotonic() + 600  # a loaded machine (parallel tests) may take minutes
        while time.monotonic() < deadline and first.poll() is None:
            if state.exists() and json.loads(state.read_text())["next_epoch"] >= 2:
                jobs = [
                    p
                    for p in psutil.Process(first.pid).children(recursive=True)
                    if any(part.endswith("train.py") for part in p.cmdline())
                ]
                assert len(jobs) == 1, jobs
                killed_pid = jobs[0].pid
                os.kill(killed_pid, signal.SIGKILL)  # the training job dies as if OOM-killed
                break
            time.sleep(0.05)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert killed_pid is not None, f"training ended before the kill:\n{stderr[-3000:]}"
    assert first.returncode != 0
    done = json.loads(state.read_text())["next_epoch"]
    assert 2 <= done < 8
    assert not (model_dir / "model.keras").exists(), "Snakemake removed the failed job's outputs"

    snakemake(tmp_path, MODEL_CARD, "--configfile", configfile)
    card = json.loads((model_dir / "model_card.json").read_text())
    history = pd.read_csv(model_dir / "history.csv")
    assert card["resumed_from_epochs"] == [done] and card["sessions"] == 2
    assert list(history["epoch"]) == list(range(1, 9))
    assert list(history["session"]) == [1] * done + [2] * (8 - done)
    log = log_file(tmp_path, "train", "resumable").read_text()
    assert f"resuming from the state in {model_dir.relative_to(tmp_path)}.state: {done} epoch(s) done" in log
    assert load_model(model_dir / "model.keras").output_shape == (None, 128, 128, 1)
    assert not state.parent.exists()


def test_no_validation_tiles_is_one_clear_error(tmp_path: Path) -> None:
    cfg = training_config()
    cfg["tiling"] = {**cfg["tiling"], "val_fraction": 0}
    proc = snakemake(tmp_path, MODEL_CARD, "--configfile", write_config(tmp_path, "c.yaml", cfg), check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cinderseg: error:")]
    tiles = paths.TILES.format(region="tiny_train")
    assert lines and f"no validation tiles (split 'val') in {tiles}" in lines[0]
    assert "tiling.split_block_px" in lines[0] and "tiling.val_fraction" in lines[0]
    assert not output(tmp_path, paths.MODEL_DIR, model="resumable").exists()
