"""Tests of cinderseg.data.tiles: windows, leak-free spatial split, npz storage, manifest, errors."""

from __future__ import annotations

import itertools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import Affine
from rasterio.windows import Window

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.core.raster import MASK_NODATA, NODATA_FLOAT
from cinderseg.data.tiles import (
    MANIFEST_COLUMNS,
    TilingSettings,
    assign_splits,
    load_tiles,
    make_tiles,
    read_manifest,
    tile_windows,
)

REPO = Path(__file__).resolve().parent.parent
UTM = "EPSG:32605"
X0, Y0, RES = 200_000.0, 2_200_000.0, 30.0
CHANNELS = ("elevation", "sobel", "clahe")
SMALL = TilingSettings(size=64, step=32, split_block_px=128, val_fraction=0.25, seed=7)


def write_pair(
    tmp_path: Path,
    shape: tuple[int, int] = (500, 700),
    *,
    seed: int = 0,
    cones: int = 25,
    nodata_box: tuple[slice, slice] | None = None,
    mask_shape: tuple[int, int] | None = None,
) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A 3-band features GeoTIFF and a 0/1 mask GeoTIFF on the same grid (arrays returned too)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    x = rng.random((len(CHANNELS), h, w)).astype(np.float32)
    rows, cols = np.mgrid[0:h, 0:w]
    mask = np.zeros(shape, dtype=np.uint8)
    for _ in range(cones):
        r, c, rad = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 12)
        mask[np.hypot(rows - r, cols - c) < rad] = 1
    if nodata_box is not None:
        x[:, nodata_box[0], nodata_box[1]] = NODATA_FLOAT
    transform = Affine(RES, 0.0, X0, 0.0, -RES, Y0)
    feat = tmp_path / "features.tif"
    profile = {"driver": "GTiff", "crs": UTM, "transform": transform, "height": h, "width": w}
    with rasterio.open(feat, "w", **profile, count=len(CHANNELS), dtype="float32", nodata=NODATA_FLOAT) as ds:
        ds.write(x)
        ds.descriptions = CHANNELS
    mh, mw = mask_shape or shape
    mpath = tmp_path / "mask.tif"
    with rasterio.open(
        mpath, "w", **{**profile, "height": mh, "width": mw}, count=1, dtype="uint8", nodata=MASK_NODATA
    ) as ds:
        ds.write(mask[:mh, :mw] if mask_shape is None else np.zeros((mh, mw), np.uint8), 1)
    return feat, mpath, x, mask


def intersects(a: Window, b: Window) -> bool:
    return (
        a.row_off < b.row_off + b.height
        and b.row_off < a.row_off + a.height
        and a.col_off < b.col_off + b.width
        and b.col_off < a.col_off + a.width
    )


# --- settings ----------------------------------------------------------------------------------------


def test_settings_match_schema_defaults() -> None:
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["tiling"]["properties"]
    defaults = TilingSettings()
    assert set(props) == set(defaults.__dataclass_fields__)
    for key, spec in props.items():
        assert getattr(defaults, key) == spec["default"], key
    assert TilingSettings.from_config({"size": 128, "step": 64}).step == 64


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"size": 100}, "tiling.size"),
        ({"size": 0}, "tiling.size"),
        ({"step": 300}, "tiling.step"),
        ({"step": 0}, "tiling.step"),
        ({"split_block_px": 200}, "tiling.split_block_px"),
        ({"val_fraction": 1.0}, "tiling.val_fraction"),
        ({"max_nodata_fraction": 1.5}, "tiling.max_nodata_fraction"),
        ({"seed": "x"}, "tiling.seed"),
        ({"sise": 224}, "tiling: unknown key 'sise'"),
    ],
)
def test_settings_errors_name_the_key(config: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        TilingSettings.from_config(config)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


# --- windows and split -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w", "size", "step"), [(500, 700, 224, 112), (448, 448, 224, 112), (300, 250, 64, 50)]
)
def test_tile_windows_cover_the_raster(h: int, w: int, size: int, step: int) -> None:
    wins = tile_windows(h, w, size, step)
    covered = np.zeros((h, w), dtype=int)
    for win in wins:
        assert win.width == win.height == size
        assert 0 <= win.row_off <= h - size and 0 <= win.col_off <= w - size
        covered[win.toslices()] += 1
    assert covered.min() >= 1
    rows = sorted({int(win.row_off) for win in wins})
    assert rows[-1] == h - size and all(b - a <= step for a, b in itertools.pairwise(rows))
    assert len(wins) == len({(win.row_off, win.col_off) for win in wins})
    if (h, w) == (500, 700):
        assert rows == [0, 112, 224, 276]
    assert tile_windows(150, 180, 224, 112) == []


def test_split_has_no_train_val_overlap_and_hits_the_target() -> None:
    h, w = 3000, 2600
    wins = tile_windows(h, w, 224, 112)
    splits = assign_splits(wins, h, w, block_px=672, val_fraction=0.2, seed=42)
    assert set(splits) <= {"train", "val", "drop"}
    train = [win for win, s in zip(wins, splits, strict=True) if s == "train"]
    val = [win for win, s in zip(wins, splits, strict=True) if s == "val"]
    assert train and val
    assert not any(intersects(a, b) for a in train for b in val)
    share = len(val) / (len(train) + len(val))
    assert share == pytest.approx(0.2, abs=0.05)
    assert splits.count("drop") < 0.35 * len(wins)
    # deterministic, and the seed matters
    assert assign_splits(wins, h, w, block_px=672, val_fraction=0.2, seed=42) == splits
    assert assign_splits(wins, h, w, block_px=672, val_fraction=0.2, seed=43) != splits


def test_split_prefers_validation_with_positives() -> None:
    h, w = 2000, 2000
    wins = tile_windows(h, w, 224, 112)
    # positives only in the upper-left quarter
    positive = [win.row_off < 900 and win.col_off < 900 for win in wins]
    splits = assign_splits(wins, h, w, block_px=448, val_fraction=0.2, seed=1, positive=positive)
    pos_val = sum(p and s == "val" for p, s in zip(positive, splits, strict=True))
    pos_train = sum(p and s == "train" for p, s in zip(positive, splits, strict=True))
    assert pos_val > 0 and pos_train > 0
    assert pos_val / (pos_val + pos_train) == pytest.approx(0.2, abs=0.12)


def test_split_edge_cases() -> None:
    wins = tile_windows(500, 700, 64, 32)
    assert assign_splits(wins, 500, 700, block_px=128, val_fraction=0.0, seed=1) == ["train"] * len(wins)
    assert assign_splits([], 500, 700, block_px=128, val_fraction=0.2, seed=1) == []
    one_block = tile_windows(300, 300, 224, 112)  # every tile in the single 672 px block
    assert set(assign_splits(one_block, 300, 300, block_px=672, val_fraction=0.2, seed=1)) == {"train"}


# --- make_tiles / load_tiles / read_manifest --------------------------------------------------------------


def test_make_tiles_train_region(tmp_path: Path) -> None:
    feat, mpath, x, mask = write_pair(tmp_path)
    tiles, manifest = tmp_path / "out" / "r.npz", tmp_path / "out" / "r.csv"
    summary = make_tiles(feat, mpath, tiles, manifest, SMALL, role="train", region="r")
    n = summary["tiles"]
    assert n == summary["train"] + summary["val"] > 0 and summary["val"] > 0
    assert summary["test"] == 0 and summary["warnings"] == []
    assert summary["candidates"] == len(tile_windows(500, 700, 64, 32))
    assert summary["candidates"] == n + summary["dropped_nodata"] + summary["dropped_boundary"]

    # plain numpy reads it without pickle
    with np.load(tiles, allow_pickle=False) as npz:
        assert npz["x"].shape == (n, 64, 64, 3) and npz["x"].dtype == np.float16
        assert npz["y"].shape == (n, 64, 64, 1) and npz["y"].dtype == np.uint8
        assert list(npz["channels"]) == list(CHANNELS)
        x_mem, y_mem = npz["x"], npz["y"]
    with zipfile.ZipFile(tiles) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())

    xs, ys, channels = load_tiles(tiles)
    assert isinstance(xs, np.memmap) and channels == list(CHANNELS)
    np.testing.assert_array_equal(xs, x_mem)
    np.testing.assert_array_equal(ys, y_mem)
    xl, yl, _ = load_tiles(tiles, mmap=False)
    np.testing.assert_array_equal(xl, x_mem)
    np.testing.assert_array_equal(yl, y_mem)

    df = read_manifest(manifest)
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    assert len(df) == n and list(df["tile_id"]) == list(range(n))
    assert set(df["split"]) == {"train", "val"}
    for row in df.itertuples():
        sl = (slice(row.row_off, row.row_off + 64), slice(row.col_off, row.col_off + 64))
        np.testing.assert_array_equal(
            xs[row.tile_id], np.moveaxis(x[:, sl[0], sl[1]], 0, -1).astype(np.float16)
        )
        np.testing.assert_array_equal(ys[row.tile_id, ..., 0], mask[sl])
        assert row.positive_fraction == pytest.approx(mask[sl].mean())
        assert row.minx == pytest.approx(X0 + row.col_off * RES)
        assert row.maxy == pytest.approx(Y0 - row.row_off * RES)
        assert row.maxx - row.minx == pytest.approx(64 * RES)
        assert row.maxy - row.miny == pytest.approx(64 * RES)
    # no training tile overlaps a validation tile
    wins = {
        s: [Window(r.col_off, r.row_off, 64, 64) for r in df[df.split == s].itertuples()]
        for s in ("train", "val")
    }
    assert not any(intersects(a, b) for a in wins["train"] for b in wins["val"])
    assert not list(tiles.parent.glob(".*"))  # no temporary files left


def test_load_tiles_memory_maps_aligned_members(tmp_path: Path) -> None:
    feat, mpath, _, _ = write_pair(tmp_path, (300, 260))
    tiles = tmp_path / "r.npz"
    make_tiles(feat, mpath, tiles, tmp_path / "r.csv", SMALL, role="test", region="r")
    xs, ys, _ = load_tiles(tiles)
    assert xs.offset % 64 == 0 and ys.offset % 64 == 0
    assert not xs.flags.writeable
    raw = tiles.read_bytes()
    first = np.frombuffer(raw, dtype="<f2", count=xs[0].size, offset=xs.offset).reshape(xs.shape[1:])
    np.testing.assert_array_equal(first, xs[0])


def test_make_tiles_test_region_and_nodata(tmp_path: Path) -> None:
    # a nodata block covering the upper-left 200 x 300 px
    feat, mpath, _, _ = write_pair(tmp_path, nodata_box=(slice(0, 200), slice(0, 300)))
    tiles, manifest = tmp_path / "t.npz", tmp_path / "t.csv"
    settings = TilingSettings(size=64, step=32, max_nodata_fraction=0.3)
    summary = make_tiles(feat, mpath, tiles, manifest, settings, role="test", region="t")
    df = read_manifest(manifest)
    assert set(df["split"]) == {"test"} and summary["test"] == len(df) == summary["tiles"]
    assert summary["dropped_boundary"] == 0
    assert df["nodata_fraction"].max() <= 0.3
    assert summary["dropped_nodata"] == sum(
        1
        for w in tile_windows(500, 700, 64, 32)
        if np.mean(
            (np.arange(w.row_off, w.row_off + 64)[:, None] < 200)
            & (np.arange(w.col_off, w.col_off + 64)[None] < 300)
        )
        > 0.3
    )
    xs, ys, _ = load_tiles(tiles)
    partial = df[df["nodata_fraction"] > 0]
    assert len(partial) > 0
    for row in partial.itertuples():
        r = np.arange(row.row_off, row.row_off + 64)[:, None] < 200
        c = np.arange(row.col_off, row.col_off + 64)[None, :] < 300
        bad = r & c
        assert np.all(xs[row.tile_id][bad] == 0) and np.all(ys[row.tile_id][bad] == 0)
        assert np.all(xs[row.tile_id][~bad] != 0)


def test_region_without_cones_warns(tmp_path: Path) -> None:
    feat, mpath, _, _ = write_pair(tmp_path, (300, 300), cones=0)
    summary = make_tiles(feat, mpath, tmp_path / "n.npz", tmp_path / "n.csv", SMALL, role="train", region="n")
    assert summary["positive_tiles"] == 0
    assert any("no cone pixels" in w and "'n'" in w for w in summary["warnings"])


def test_region_smaller_than_a_tile(tmp_path: Path) -> None:
    feat, mpath, _, _ = write_pair(tmp_path, (150, 180))
    tiles = tmp_path / "x.npz"
    with pytest.raises(InputError) as err:
        make_tiles(feat, mpath, tiles, tmp_path / "x.csv", TilingSettings(), role="train", region="x")
    assert str(err.value).startswith(
        "region 'x': DEM is 180 x 150 px, smaller than one tile of 224 px (tiling.size)"
    )
    assert str(feat) in str(err.value)
    assert not tiles.exists()


def test_grids_differ(tmp_path: Path) -> None:
    feat, mpath, _, _ = write_pair(tmp_path, (300, 300), mask_shape=(300, 290))
    with pytest.raises(InputError, match=r"mask of region 'g': .*not on the grid of the features .*features"):
        make_tiles(feat, mpath, tmp_path / "g.npz", tmp_path / "g.csv", SMALL, role="train", region="g")


def test_no_tile_kept(tmp_path: Path) -> None:
    feat, mpath, _, _ = write_pair(tmp_path, (200, 200), nodata_box=(slice(0, 200), slice(0, 200)))
    tiles, manifest = tmp_path / "e.npz", tmp_path / "e.csv"
    with pytest.raises(InputError, match=r"region 'e': no tile kept from .*features.tif"):
        make_tiles(feat, mpath, tiles, manifest, SMALL, role="train", region="e")
    assert not tiles.exists() and not manifest.exists()


def test_bad_role_and_bad_tiles_file(tmp_path: Path) -> None:
    feat, mpath, _, _ = write_pair(tmp_path, (200, 200))
    with pytest.raises(ConfigError, match="role 'predict'"):
        make_tiles(feat, mpath, tmp_path / "p.npz", tmp_path / "p.csv", SMALL, role="predict", region="p")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"junk\.npz"):
        load_tiles(junk)
    with pytest.raises(InputError, match="not found"):
        read_manifest(tmp_path / "missing.csv")
