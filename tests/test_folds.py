"""Tests of cinderseg.data.folds: block grids, leak-free fold tiles, points in blocks, config errors,
tables (cinderseg.assess.crossval)."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rasterio.transform import Affine
from rasterio.windows import Window

from cinderseg.assess.crossval import FOLD_COLUMNS, crossval_tables
from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.grid import points_in_block
from cinderseg.data.folds import (
    Fold,
    block_grid,
    cut_fold_tiles,
    fold_tile_splits,
    folds_from_config,
    gap_pixels,
    held_out_block,
)
from cinderseg.data.tiles import TilingSettings, read_manifest, tile_windows
from cinderseg.workflow.config import validate_config
from tests.test_tiles import RES, SMALL, write_pair

LABELLED = {"source": "synthetic", "labels": "synthetic"}
REGIONS = {
    "a": {**LABELLED, "role": "train"},
    "b": {**LABELLED, "role": "test"},
    "c": {**LABELLED, "role": "test"},
    "p": {"source": "synthetic"},
}


def config(**crossval: object) -> dict:
    return {"regions": copy.deepcopy(REGIONS), "crossval": crossval}


def separation(a: Window, b: Window) -> int:
    """Whole pixels between two pixel rectangles along the better axis (0 if they touch or overlap)."""
    rows = max(b.row_off - (a.row_off + a.height), a.row_off - (b.row_off + b.height), 0)
    cols = max(b.col_off - (a.col_off + a.width), a.col_off - (b.col_off + b.width), 0)
    return int(max(rows, cols))


def overlaps(a: Window, b: Window) -> bool:
    return (
        a.row_off < b.row_off + b.height
        and b.row_off < a.row_off + a.height
        and a.col_off < b.col_off + b.width
        and b.col_off < a.col_off + a.width
    )


def min_centre_distance_px(a: Window, b: Window) -> float:
    """Smallest Euclidean distance in pixel widths between a pixel centre of a and one of b."""
    dr = max(b.row_off - (a.row_off + a.height - 1), a.row_off - (b.row_off + b.height - 1), 0)
    dc = max(b.col_off - (a.col_off + a.width - 1), a.col_off - (b.col_off + b.width - 1), 0)
    return math.hypot(dr, dc)


# --- blocks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w", "rows", "cols"), [(600, 700, 2, 2), (513, 401, 3, 2), (100, 97, 1, 5), (7, 9, 7, 1)]
)
def test_blocks_partition_the_raster_exactly(h: int, w: int, rows: int, cols: int) -> None:
    blocks = block_grid(h, w, rows, cols)
    assert len(blocks) == rows * cols
    cover = np.zeros((h, w), dtype=int)
    for b in blocks:
        assert b.height > 0 and b.width > 0
        cover[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width] += 1
    assert (cover == 1).all(), "every pixel in exactly one block"
    heights = {b.height for b in blocks}
    widths = {b.width for b in blocks}
    assert max(heights) - min(heights) <= 1 and max(widths) - min(widths) <= 1
    # row-major: block i + 1 is right of block i within a row, rows go down
    assert [(b.row_off, b.col_off) for b in blocks] == sorted((b.row_off, b.col_off) for b in blocks)
    with pytest.raises(InputError, match="does not fit"):
        block_grid(h, w, h + 1, cols)


def test_every_block_is_held_out_exactly_once() -> None:
    folds = folds_from_config(validate_config(config(spatial_folds={"b": {"rows": 2, "cols": 3}})))
    assert list(folds) == [f"b-b{i}" for i in range(1, 7)]
    cover = np.zeros((500, 610), dtype=int)
    for fold in folds.values():
        assert (fold.kind, fold.held_out_region, fold.training_regions, fold.gap_m) == (
            "spatial",
            "b",
            ("b",),
            2000,
        )
        block = held_out_block(500, 610, fold)
        cover[block.row_off : block.row_off + block.height, block.col_off : block.col_off + block.width] += 1
    assert (cover == 1).all()


def test_leave_one_region_out_folds_train_on_the_other_listed_regions() -> None:
    folds = folds_from_config(validate_config(config(leave_one_region_out=["a", "b", "c"])))
    assert {name: (f.held_out_region, f.training_regions) for name, f in folds.items()} == {
        "loro-a": ("a", ("b", "c")),
        "loro-b": ("b", ("a", "c")),
        "loro-c": ("c", ("a", "b")),
    }
    assert all(f.kind == "loro" and f.block is None for f in folds.values())
    fold = folds["loro-b"]
    assert Fold.from_params(json.loads(json.dumps(fold.as_params()))) == fold
    with pytest.raises(ValueError, match="not a spatial fold"):
        held_out_block(100, 100, fold)


# --- tiles of a fold -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "cols", "gap_px"), [(2, 2, 20), (2, 3, 0), (1, 2, 45)])
def test_no_fold_tile_comes_within_the_gap_of_its_held_out_block(rows: int, cols: int, gap_px: int) -> None:
    h, w = 600, 700
    windows = tile_windows(h, w, 64, 32)
    positive = np.random.default_rng(3).random(len(windows)) < 0.3
    for block in block_grid(h, w, rows, cols):
        splits = fold_tile_splits(
            windows, h, w, block, gap_px, block_px=128, val_fraction=0.25, seed=7, positive=positive
        )
        assert set(splits) <= {"train", "val", "drop", "held_out"}
        used = [win for win, s in zip(windows, splits, strict=True) if s in ("train", "val")]
        assert used, "some tiles remain for training"
        for win in used:
            assert separation(win, block) >= gap_px, (win, block)
            assert min_centre_distance_px(win, block) >= gap_px + 1
        for win, s in zip(windows, splits, strict=True):
            if s == "held_out":  # only what must go is left out
                assert separation(win, block) < gap_px or overlaps(win, block)
        train = [win for win, s in zip(windows, splits, strict=True) if s == "train"]
        val = [win for win, s in zip(windows, splits, strict=True) if s == "val"]
        assert train and val
        assert not any(overlaps(t, v) for t, v in itertools.product(train, val))


def test_cut_fold_tiles_leaves_out_the_block_and_its_gap(tmp_path: Path) -> None:
    feat, mask, _, _ = write_pair(tmp_path, (320, 448), cones=30)
    fold = Fold("r-b1", "spatial", "r", ("r",), block=1, rows=1, cols=2, gap_m=300)
    summary = cut_fold_tiles(feat, mask, tmp_path / "t.npz", tmp_path / "t.csv", SMALL, fold)
    gap_px = math.ceil(300 / RES)
    block = Window(0, 0, 224, 320)
    assert summary["gap_px"] == gap_px == gap_pixels(300, Affine(RES, 0, 0, 0, -RES, 0))
    assert summary["held_out_block"] == {"row_off": 0, "col_off": 0, "height": 320, "width": 224}
    manifest = read_manifest(tmp_path / "t.csv")
    assert set(manifest["split"]) == {"train", "val"}
    tiles = [Window(c, r, s, s) for r, c, s in manifest[["row_off", "col_off", "size"]].to_numpy()]
    assert all(separation(t, block) >= gap_px for t in tiles)
    assert summary["dropped_held_out"] == sum(
        separation(t, block) < gap_px or overlaps(t, block) for t in tile_windows(320, 448, 64, 32)
    )
    train = [t for t, s in zip(tiles, manifest["split"], strict=True) if s == "train"]
    val = [t for t, s in zip(tiles, manifest["split"], strict=True) if s == "val"]
    assert not any(overlaps(t, v) for t, v in itertools.product(train, val))
    assert summary["candidates"] == (
        summary["tiles"]
        + summary["dropped_held_out"]
        + summary["dropped_nodata"]
        + summary["dropped_boundary"]
    )


def test_a_gap_wider_than_the_rest_of_the_region_is_one_clear_error(tmp_path: Path) -> None:
    feat, mask, _, _ = write_pair(tmp_path, (128, 256))
    fold = Fold("r-b1", "spatial", "r", ("r",), block=1, rows=1, cols=2, gap_m=5000)
    with pytest.raises(InputError) as info:
        cut_fold_tiles(feat, mask, tmp_path / "t.npz", tmp_path / "t.csv", TilingSettings(size=64, step=32,
                       split_block_px=128), fold)  # fmt: skip
    assert "no tile kept" in str(info.value) and "of the held-out block" in str(info.value)
    assert not (tmp_path / "t.npz").exists() and not (tmp_path / "t.csv").exists()


# --- points ----------------------------------------------------------------------------------------------


def test_points_in_block() -> None:
    transform = Affine(30.0, 0.0, 200_000.0, 0.0, -30.0, 2_200_000.0)
    west, east = block_grid(100, 100, 1, 2)  # columns 0-49 and 50-99
    x_edge = 200_000.0 + 50 * 30.0  # the line between the two blocks
    xs = np.array([200_015.0, x_edge - 0.01, x_edge, 202_985.0, 203_000.0, 199_999.0, np.nan])
    ys = np.full(len(xs), 2_199_000.0)
    assert points_in_block(xs, ys, transform, west).tolist() == [
        True,
        True,
        False,
        False,
        False,
        False,
        False,
    ]
    assert points_in_block(xs, ys, transform, east).tolist() == [
        False,
        False,
        True,
        True,
        False,
        False,
        False,
    ]
    # rows: y decreases downwards; the top edge belongs to the block, the bottom edge does not
    top, bottom = block_grid(100, 100, 2, 1)
    y_edge = 2_200_000.0 - 50 * 30.0
    ys = np.array([2_200_000.0, y_edge + 0.01, y_edge, 2_197_000.0])
    xs = np.full(len(ys), 201_000.0)
    assert points_in_block(xs, ys, transform, top).tolist() == [True, True, False, False]
    assert points_in_block(xs, ys, transform, bottom).tolist() == [False, False, True, False]


# --- config ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crossval", "key", "words"),
    [
        ({"spatial_folds": {"nowhere": {}}}, "crossval.spatial_folds.nowhere", "unknown region 'nowhere'"),
        ({"leave_one_region_out": ["a", "zz"]}, "crossval.leave_one_region_out", "unknown region 'zz'"),
        ({"spatial_folds": {"p": {}}}, "crossval.spatial_folds.p", "region 'p' has role 'predict'"),
        ({"leave_one_region_out": ["a", "p"]}, "crossval.leave_one_region_out", "region 'p' has role"),
        ({"leave_one_region_out": ["a"]}, "crossval.leave_one_region_out", "at least 2 are needed"),
        ({"spatial_folds": {"a": {"rows": 1, "cols": 1}}}, "crossval.spatial_folds.a", "at least 2 blocks"),
        ({"spatial_folds": {"a": {"rows": 0}}}, "crossval.spatial_folds.a.rows", "must be >= 1"),
        ({"spatial_folds": {"a": {"gap": 5}}}, "crossval.spatial_folds.a", "unknown key 'gap'"),
        ({"leave_one_region_out": ["a", "a"]}, "crossval.leave_one_region_out", "non-unique"),
    ],
)
def test_crossval_config_errors_are_one_line_naming_the_key(crossval: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(config(**crossval), source="cv.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cv.yaml: {key}: ")
    assert words in message


def test_fold_names_must_be_unique() -> None:
    cfg = {"regions": {"x": {**LABELLED, "role": "test"}, "loro-x": {**LABELLED, "role": "test"}}}
    cfg["regions"]["x-b1"] = {**LABELLED, "role": "test"}
    cfg["crossval"] = {"spatial_folds": {"x": {"rows": 1, "cols": 2}}, "leave_one_region_out": ["x-b1", "x"]}
    folds = folds_from_config(validate_config(cfg))
    assert list(folds) == ["x-b1", "x-b2", "loro-x-b1", "loro-x"]
    cfg["crossval"]["spatial_folds"]["loro-x"] = {"rows": 1, "cols": 2}  # loro-x-b1 twice
    with pytest.raises(
        ConfigError, match=r"crossval\.leave_one_region_out: fold name 'loro-x-b1' is used twice"
    ):
        validate_config(cfg)


def test_no_crossval_section_means_no_folds() -> None:
    cfg = validate_config({"regions": copy.deepcopy(REGIONS)})
    assert cfg["crossval"] == {"spatial_folds": {}, "leave_one_region_out": []}
    assert folds_from_config(cfg) == {}


# --- tables ------------------------------------------------------------------------------------------------


def fold_json(path: Path, fold: Fold, network_f1: float | None, baseline_f1: float) -> Path:
    def block(f1: float | None, n: int) -> dict:
        return {"pixel": {"iou": 0.5}, "objects": {"n_true": n, "n_pred": n, "n_matched": n // 2,
                                                  "precision": f1, "recall": f1, "f1": f1}}  # fmt: skip

    data = {"region": fold.held_out_region, "fold": fold.as_params(), **block(network_f1, 10),
            "baseline": block(baseline_f1, 10)}  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def test_crossval_tables(tmp_path: Path) -> None:
    folds = [
        (Fold("a-b1", "spatial", "a", ("a",), 1, 1, 2, 2000), 0.6, 0.4),
        (Fold("a-b2", "spatial", "a", ("a",), 2, 1, 2, 2000), 0.8, 0.5),
        (Fold("loro-a", "loro", "a", ("b", "c")), 0.3, 0.45),
        (Fold("loro-b", "loro", "b", ("a", "c")), None, 0.2),  # F1 undefined: left out of the mean
        (Fold("loro-c", "loro", "c", ("a", "b")), 0.5, 0.1),
    ]
    paths = [fold_json(tmp_path / f"{f.name}.json", f, n, b) for f, n, b in folds]
    table, summary = crossval_tables(paths, tmp_path / "folds.csv", tmp_path / "summary.csv")
    csv = pd.read_csv(tmp_path / "folds.csv")
    assert list(csv.columns) == list(FOLD_COLUMNS) and len(csv) == 10
    assert list(csv["method"][:2]) == ["network", "baseline"]
    assert csv.loc[4, "training_regions"] == "b;c" and csv.loc[4, "kind"] == "loro"
    assert math.isnan(csv.loc[6, "object_f1"])
    s = pd.read_csv(tmp_path / "summary.csv").set_index(["kind", "held_out_region"])
    assert list(s.index) == [
        ("spatial", "a"),
        ("spatial", "all"),
        ("loro", "a"),
        ("loro", "b"),
        ("loro", "c"),
        ("loro", "all"),
        ("all", "all"),
    ]
    assert s.loc[("spatial", "a"), "network_object_f1_mean"] == pytest.approx(0.7)
    assert s.loc[("spatial", "a"), "baseline_object_f1_mean"] == pytest.approx(0.45)
    assert s.loc[("spatial", "a"), "network_minus_baseline_object_f1"] == pytest.approx(0.25)
    assert s.loc[("spatial", "a"), "n_folds"] == 2
    assert math.isnan(s.loc[("loro", "b"), "network_object_f1_mean"])
    assert s.loc[("loro", "all"), "network_object_f1_mean"] == pytest.approx(0.4)
    assert s.loc[("loro", "all"), "baseline_object_f1_mean"] == pytest.approx(0.25)
    assert s.loc[("all", "all"), "n_folds"] == 5
    assert s.loc[("all", "all"), "network_object_f1_mean"] == pytest.approx((0.6 + 0.8 + 0.3 + 0.5) / 4)
    assert len(table) == 10 and len(summary) == 7
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"region": "a", "objects": {}}))
    with pytest.raises(InputError, match=r"bad\.json is not a cross-validation metrics file"):
        crossval_tables([bad], tmp_path / "f2.csv", tmp_path / "s2.csv")
    assert not (tmp_path / "f2.csv").exists()
