"""Cross-region evaluation in the workflow: the fold jobs a config plans, and one small real run."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cinderseg.data.folds import block_grid
from cinderseg.data.tiles import read_manifest
from cinderseg.workflow import paths
from tests.workflow_helpers import (
    JOB_LINE,
    REPO,
    WILDCARDS_LINE,
    benchmark_file,
    log_file,
    output,
    snakemake,
    write_config,
)

pytestmark = pytest.mark.workflow
TINY = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
CROSSVAL_RULES = {"crossval_train", "crossval_predict", "crossval_vectorize", "crossval_evaluate"}


def planned(workdir: Path, configfile: str, *targets: str) -> set[tuple[str, str]]:
    """(rule, fold, region or other wildcard) of every job a dry run would execute ('' for none)."""
    proc = snakemake(workdir, *targets, "--dry-run", "--configfile", configfile)
    jobs: set[tuple[str, str]] = set()
    rule: str | None = None
    for line in proc.stdout.splitlines():
        if match := JOB_LINE.match(line.strip()):
            if rule is not None:
                jobs.add((rule, ""))
            rule = match.group(1)
        elif (wildcards := WILDCARDS_LINE.match(line)) and rule is not None:
            values = dict(part.split("=", 1) for part in wildcards.group(1).split(", "))
            jobs.add((rule, values.get("fold") or values.get("region") or next(iter(values.values()))))
            rule = None
    if rule is not None:
        jobs.add((rule, ""))
    return jobs


def test_a_crossval_config_plans_one_set_of_jobs_per_fold(tmp_path: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["crossval"] = {
        "spatial_folds": {"tiny_test": {"rows": 2, "cols": 2, "gap_m": 300}},
        "leave_one_region_out": ["tiny_train", "tiny_test"],
    }
    configfile = write_config(tmp_path, "cv.yaml", cfg)
    jobs = planned(tmp_path, configfile, "crossval")
    folds = {f"tiny_test-b{i}" for i in range(1, 5)} | {"loro-tiny_train", "loro-tiny_test"}
    for rule in CROSSVAL_RULES:
        assert {fold for r, fold in jobs if r == rule} == folds, rule
    assert {fold for r, fold in jobs if r == "crossval_tiles"} == {f"tiny_test-b{i}" for i in range(1, 5)}
    # loro-tiny_test trains on tiny_train's own tiles (role train); tiny_test (role test) is cut anew
    assert {region for r, region in jobs if r == "crossval_region_tiles"} == {"tiny_test"}
    assert ("tiles", "tiny_train") in jobs and ("tiles", "tiny_test") not in jobs
    assert {("baseline", "tiny_train"), ("baseline", "tiny_test"), ("crossval_summary", "")} <= jobs
    assert not {"train", "predict", "evaluate", "metrics_summary"} & {r for r, _ in jobs}, "crossval only"
    everything = planned(tmp_path, configfile)  # the default target includes the cross-validation
    assert jobs - {("crossval", "")} <= everything and ("train", "unet") in everything


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_crossval_target_without_folds_says_what_to_add(tmp_path: Path, dry_run: bool) -> None:
    """One line naming the crossval section, before any job runs: no traceback, no lock left."""
    configfile = write_config(tmp_path, "c.yaml", TINY)
    proc = snakemake(
        tmp_path, "crossval", *(["-n"] if dry_run else []), "--configfile", configfile, check=False
    )
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    errors = [line for line in text.splitlines() if "error" in line.lower() or "exception" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("cinderseg: error: "), text[-3000:]
    assert errors[0].endswith(
        "c.yaml: the crossval target needs folds: add a crossval section with spatial_folds or "
        "leave_one_region_out to the config (see docs/configuration.md, crossval)"
    )
    assert "Traceback" not in text and "InputFunctionException" not in text
    assert not (tmp_path / "results").exists()
    assert not list((tmp_path / ".snakemake" / "locks").glob("*")), "the directory is not left locked"


def test_spatial_folds_run_and_score_only_their_held_out_block(tmp_path: Path) -> None:
    region = copy.deepcopy(TINY["regions"]["tiny_train"])
    region["synthetic"].update(width_px=448, n_cones=16)
    cfg = {
        "regions": {"field": region},
        "crossval": {"spatial_folds": {"field": {"rows": 1, "cols": 2, "gap_m": 300}}},
        "tiling": TINY["tiling"],
        "model": TINY["model"],
        "train": {"epochs": 1, "batch_size": 4, "steps_per_epoch": 2},
        # the folds' mechanics, not the second stage (tested in the workflow by tests/test_maptiles.py
        # and tests/test_workflow_errors.py, whose regions keep the default)
        "vectorize": {"second_stage": "none"},
    }
    snakemake(tmp_path, "crossval", "--configfile", write_config(tmp_path, "cv.yaml", cfg))
    blocks = block_grid(320, 448, 1, 2)
    n_labels = None
    n_true = {"network": 0, "baseline": 0}
    for i, block in enumerate(blocks, start=1):
        fold = f"field-b{i}"
        data = json.loads(output(tmp_path, paths.FOLD_METRICS, fold=fold).read_text())
        assert data["fold"]["name"] == fold and data["role"] == "held_out"
        area = data["area"]
        assert (area["row_off"], area["col_off"], area["height"], area["width"]) == (
            block.row_off,
            block.col_off,
            block.height,
            block.width,
        )
        assert data["pixel"]["n_valid_px"] == block.height * block.width
        n_labels = data["n_labels"]
        n_true["network"] += data["objects"]["n_true"]
        n_true["baseline"] += data["baseline"]["objects"]["n_true"]
        manifest = read_manifest(output(tmp_path, paths.FOLD_MANIFEST, fold=fold))
        assert set(manifest["split"]) == {"train", "val"}
        for c0, size in manifest[["col_off", "size"]].to_numpy():
            gap_cols = max(block.col_off - (c0 + size), c0 - (block.col_off + block.width))
            assert gap_cols >= 10, "training tiles keep gap_m = 300 m = 10 px from the held-out block"
        card = json.loads(
            output(tmp_path, paths.FOLD_MODEL_FILE, fold=fold, file="model_card.json").read_text()
        )
        history = output(tmp_path, paths.FOLD_MODEL_FILE, fold=fold, file="history.csv")
        assert card["training_regions"] == ["field"] and history.is_file()
        assert card["fold"] == data["fold"], "the card says which block its model never saw"
        assert output(tmp_path, paths.FOLD_CONES, fold=fold).is_file()
        assert output(tmp_path, paths.FOLD_FIGURE, fold=fold, figure="errors").stat().st_size > 10_000
        assert log_file(tmp_path, "crossval_evaluate", fold).is_file()
        assert benchmark_file(tmp_path, "crossval_train", fold).is_file()
    # the two blocks partition the region: each true cone is scored in exactly one fold
    assert n_true == {"network": n_labels, "baseline": n_labels} and n_labels > 0

    folds = pd.read_csv(tmp_path / paths.CROSSVAL_FOLDS)
    assert list(zip(folds["fold"], folds["method"], strict=True)) == [
        ("field-b1", "network"),
        ("field-b1", "baseline"),
        ("field-b2", "network"),
        ("field-b2", "baseline"),
    ]
    assert set(folds["kind"]) == {"spatial"} and set(folds["training_regions"]) == {"field"}
    summary = pd.read_csv(tmp_path / paths.CROSSVAL_SUMMARY)
    assert list(summary["held_out_region"]) == ["field", "all"] and list(summary["n_folds"]) == [2, 2]
    for column in ("network_object_f1_mean", "baseline_object_f1_mean", "network_minus_baseline_object_f1"):
        assert summary[column].map(math.isfinite).all(), column
    row = summary.iloc[0]
    assert row["network_minus_baseline_object_f1"] == pytest.approx(
        row["network_object_f1_mean"] - row["baseline_object_f1_mean"], abs=2e-4
    )
    assert not (tmp_path / paths.MODEL_DIR).parent.exists(), "the crossval target trains no main model"

    # The report shows each fold's training curves, with their caption.
    snakemake(tmp_path, "crossval", "--configfile", "cv.yaml", "--report", paths.REPORT)
    html = (tmp_path / paths.REPORT).read_text(errors="replace")
    for i in range(1, len(blocks) + 1):
        assert f"field-b{i}" in html
    assert html.count("training_curves.png") >= len(blocks)
    assert "trained without the fold" in html and "held-out area" in html
