"""Bad input through the whole workflow, as one table: every case runs ``snakemake`` on a small config.

A failing case must print one ``cinderseg: error:`` line holding the expected text (naming the file,
region or config key), exit non-zero without a Python traceback, and leave no output of the failed
step (nor any temporary file) behind; a config error stops before any job, with no ``results/`` at
all. Cases marked "must work" (NaN holes, a geographic DEM, invalid label geometries) run through
the tiles step and check what they made.

Also: an SRTM-like geographic DEM in two files, with voids and point labels in lon/lat, just works
through training.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import Point, Polygon

from cinderseg.data.examples import write_srtm_like_example
from cinderseg.data.tiles import load_tiles
from cinderseg.terrain.synthetic import SyntheticParams
from cinderseg.workflow import paths
from tests.workflow_helpers import output, snakemake, write_config

pytestmark = pytest.mark.workflow
UTM5N = "EPSG:32605"
TILING = {"size": 64, "step": 32, "split_block_px": 64}
CONE = (202400, 2197600)  # a labelled cone inside write_dem's DEM (UTM 5N)


def write_dem(
    path: Path,
    *,
    crs: str | None = UTM5N,
    size: int = 160,
    nodata: float | None = -9999,
    edit: Callable[[np.ndarray], None] | None = None,
) -> None:
    """A small sloping DEM in UTM 5N at 30 m (upper-left 200000, 2200000); ``edit`` changes z in place."""
    z = (1000 + np.add.outer(np.arange(size), np.arange(size)) * 2.0).astype("float32")
    if edit is not None:
        edit(z)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=1, dtype="float32", crs=crs,
        transform=from_origin(200000, 2200000, 30, 30), nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(z, 1)


def write_points(
    path: Path, points: list[tuple[float, float]], radius: float | None = 150.0, crs: str = UTM5N
) -> None:
    columns = {"radius_m": [radius] * len(points)} if radius is not None else {"name": ["c"] * len(points)}
    gdf = gpd.GeoDataFrame(columns, geometry=[Point(x, y) for x, y in points], crs=crs)
    gdf.to_file(path, driver="GPKG")


def file_region(dem: str = "dem.tif", labels: str | None = "labels.gpkg", role: str = "train") -> dict:
    region: dict[str, Any] = {"source": "file", "dem": dem, "role": role, "resolution_m": 30}
    if labels is not None:
        region["labels"] = labels
    return region


def outputs(work: Path) -> list[str]:
    """Data files left under results/ (logs and benchmarks aside)."""
    results = work / paths.RESULTS
    if not results.exists():
        return []
    return sorted(
        str(p.relative_to(results))
        for p in results.rglob("*")
        if p.is_file() and p.parts[len(results.parts)] not in {"logs", "benchmarks"}
    )


def temporaries(work: Path) -> list[str]:
    """Hidden files (temporaries of atomic writes, partial downloads) under results/ and resources/."""
    return sorted(
        str(p.relative_to(work))
        for top in (paths.RESULTS, paths.RESOURCES)
        if (work / top).exists()
        for p in (work / top).rglob(".*")
    )


# --- the cases: each writes its inputs into the work directory and returns the config ---------------


Maker = Callable[[Path, Path | None], dict]


def standard(**changes: Any) -> Maker:
    """The standard inputs (sloping DEM, one point label), config sections changed by ``changes``."""

    def make(work: Path, _: Path | None) -> dict:
        write_dem(work / "dem.tif")
        write_points(work / "labels.gpkg", [CONE])
        return {"regions": {"vol": file_region()}, "tiling": TILING, **changes}

    return make


def region_changed(**changes: Any) -> Maker:
    """The standard inputs with the region's settings changed (None removes a setting)."""

    def make(work: Path, model: Path | None) -> dict:
        cfg = standard()(work, model)
        region = cfg["regions"]["vol"]
        region.update(changes)
        cfg["regions"]["vol"] = {k: v for k, v in region.items() if v is not None}
        return cfg

    return make


def renamed(name: str) -> Maker:
    def make(work: Path, model: Path | None) -> dict:
        cfg = standard()(work, model)
        cfg["regions"] = {name: cfg["regions"]["vol"]}
        return cfg

    return make


def bad_dem(write: Callable[[Path], None]) -> Maker:
    def make(work: Path, model: Path | None) -> dict:
        cfg = standard()(work, model)
        write(work / "dem.tif")
        return cfg

    return make


def bad_labels(points: list[tuple[float, float]], radius: float | None = 150.0) -> Maker:
    def make(work: Path, model: Path | None) -> dict:
        cfg = standard()(work, model)
        write_points(work / "labels.gpkg", points, radius)
        return cfg

    return make


def garbage(path: Path) -> None:
    path.write_bytes(b"II*\x00" + bytes(range(256)) * 8)


def all_nodata(z: np.ndarray) -> None:
    z[:] = -9999


def seeded_tile_of_another_place(work: Path, _: Path | None) -> dict:
    """A usgs3dep region whose cached tile (seeded by hand) holds another place than its bbox."""
    tile = work / "resources" / "dem" / "tiles" / "USGS_13_n20w156.tif"
    tile.parent.mkdir(parents=True)
    write_dem(tile)  # UTM 5N near 158 W: not in the bbox at 155.5 W
    region = {"source": "usgs3dep", "bbox": [-155.5, 19.5, -155.4, 19.6], "resolution_m": 30}
    return {"regions": {"vol": region}, "download": {"method": "staged", "staged_url": "http://127.0.0.1:9"}}


def with_model(files: Callable[[Path, Path], None], **changes: Any) -> Maker:
    """A predict region on the standard DEM; predict.model: a copy of the tiny run's model, then ``files``."""

    def make(work: Path, trained: Path | None) -> dict:
        assert trained is not None
        write_dem(work / "dem.tif")
        (work / "model").mkdir()
        for name in ("model.keras", "model_card.json"):
            shutil.copy(trained / name, work / "model" / name)
        files(work / "model", trained)
        tiling = {"size": 128, "step": 64, "split_block_px": 128}  # the tiny model's tile size
        return {"regions": {"vol": file_region(labels=None, role="predict")}, "tiling": tiling,
                "predict": {"model": "model/model.keras"}, **changes}  # fmt: skip

    return make


def untouched(model_dir: Path, trained: Path) -> None:
    pass


def nan_holes(z: np.ndarray) -> None:
    z[40:43, 40:43] = np.nan  # a small void: filled
    z[100:140, 10:50] = np.nan  # a large one: stays nodata


def geographic(work: Path, _: Path | None) -> dict:
    """A DEM in EPSG:4326 (about 31 m pixels near Hawaii) with point labels in lon/lat."""
    n, px = 200, 0.0003
    z = (1000 + np.add.outer(np.arange(n), np.arange(n)) * 2.0).astype("float32")
    with rasterio.open(
        work / "dem.tif", "w", driver="GTiff", width=n, height=n, count=1, dtype="float32",
        crs="EPSG:4326", transform=from_origin(-155.5, 19.6, px, px), nodata=-9999,
    ) as dst:  # fmt: skip
        dst.write(z, 1)
    write_points(work / "labels.gpkg", [(-155.47, 19.57)], crs="EPSG:4326")
    return {"regions": {"vol": file_region(role="test")}, "tiling": TILING}


def invalid_geometries(work: Path, _: Path | None) -> dict:
    """A self-intersecting (bow-tie) cone outline: repaired into two triangles."""
    write_dem(work / "dem.tif")
    x, y = CONE
    bowtie = Polygon([(x - 300, y - 300), (x + 300, y + 300), (x + 300, y - 300), (x - 300, y + 300)])
    assert not bowtie.is_valid
    gpd.GeoDataFrame({"name": ["c"]}, geometry=[bowtie], crs=UTM5N).to_file(work / "labels.gpkg")
    return {"regions": {"vol": file_region(role="test")}, "tiling": TILING}


def check_probability(work: Path) -> None:
    with rasterio.open(output(work, paths.PROBABILITY, region="vol")) as ds:
        p = ds.read(1, masked=True)
    assert p.count() > 0 and 0.0 <= float(p.min()) and float(p.max()) <= 1.0


def check_nan_holes(work: Path) -> None:
    with rasterio.open(output(work, paths.DEM, region="vol")) as dem:
        z = dem.read(1, masked=True)
    mask = z.mask
    assert not mask[40:43, 40:43].any(), "a small void is filled"
    assert mask[105:135, 15:45].all(), "a large void stays nodata"
    with rasterio.open(output(work, paths.MASK, region="vol")) as m:
        assert (m.read(1)[105:135, 15:45] == 255).all()
    x, _, _ = load_tiles(output(work, paths.TILES, region="vol"))
    assert x.shape[0] > 0 and np.isfinite(np.asarray(x, dtype="float32")).all()


def check_geographic(work: Path) -> None:
    with rasterio.open(output(work, paths.DEM, region="vol")) as dem:
        assert dem.crs.to_epsg() == 32605 and dem.res == (30.0, 30.0)
    with rasterio.open(output(work, paths.MASK, region="vol")) as m:
        cone_px = int((m.read(1) == 1).sum())
    assert cone_px == pytest.approx(np.pi * 150**2 / 30**2, rel=0.15)
    assert load_tiles(output(work, paths.TILES, region="vol"))[0].shape[0] > 0


def check_repaired(work: Path) -> None:
    with rasterio.open(output(work, paths.MASK, region="vol")) as m:
        cone_px = int((m.read(1) == 1).sum())
    assert cone_px == pytest.approx(2 * 300 * 300 / 30**2, rel=0.15)  # two triangles of the bow-tie


@dataclass(frozen=True)
class Case:
    """``expected``: texts of the error line (None: must work). ``step``: the results/ folder of the
    failing step, whose outputs must be gone ('config': stops before any job)."""

    make: Maker
    expected: tuple[str, ...] | None
    step: str
    target: str = paths.TILES.format(region="vol")
    needs_model: bool = False
    check: Callable[[Path], None] | None = None


SYNTHETIC_SMALL = {"source": "synthetic", "role": "train", "labels": "synthetic",
                   "synthetic": {"width_px": 100, "height_px": 100, "n_cones": 2}}  # fmt: skip
SYNTHETIC_CROWDED = {"source": "synthetic", "role": "train", "labels": "synthetic",
                     "synthetic": {"width_px": 64, "height_px": 64, "n_cones": 400}}  # fmt: skip

CASES: dict[str, Case] = {
    # the config: checked at start-up, before any job
    "config-typo": Case(standard(tilng={}), ("c.yaml", "unknown key 'tilng'"), "config"),
    "region-key-typo": Case(
        region_changed(resolutoin_m=30), ("c.yaml", "regions.vol", "'resolutoin_m'"), "config"
    ),
    "wrong-type": Case(
        standard(tiling={**TILING, "size": "64"}), ("tiling.size: '64' is not of type integer",), "config"
    ),
    "size-not-multiple-of-32": Case(
        standard(tiling={"size": 100, "step": 50, "split_block_px": 200}),
        ("tiling.size: 100 is not a multiple of 32",),
        "config",
    ),
    "step-larger-than-size": Case(
        standard(tiling={**TILING, "step": 96}),
        ("tiling.step: 96 is larger than tiling.size (64)",),
        "config",
    ),
    "region-name-slash": Case(renamed("a/b"), ("region name 'a/b' may contain only",), "config"),
    "region-name-dotdot": Case(renamed(".."), ("region name '..' may contain only",), "config"),
    "model-name-dotdot": Case(
        standard(model={"name": "../elsewhere"}), ("model.name: '../elsewhere' may contain only",), "config"
    ),
    "unknown-encoder": Case(
        standard(model={"encoder": "vgg99"}), ("model.encoder: 'vgg99' is not one of",), "config"
    ),
    "missing-weights-file": Case(
        standard(model={"encoder": "hed_vgg16", "encoder_weights": "weights/hed.weights.h5"}),
        ("c.yaml: model.encoder_weights: weights file not found: weights/hed.weights.h5",),
        "config",
    ),
    "threshold-outside-0-1": Case(
        standard(vectorize={"threshold": 1.5}), ("vectorize.threshold: 1.5 must be < 1",), "config"
    ),
    "download-not-http": Case(
        standard(download={"staged_url": "file:///data/usgs"}),
        ("download.staged_url: 'file:///data/usgs' is not an http(s) URL",),
        "config",
    ),
    "missing-dem-file": Case(
        region_changed(dem="nowhere.tif"),
        ("c.yaml: regions.vol.dem: DEM file not found: nowhere.tif",),
        "config",
    ),
    "missing-labels-file": Case(
        region_changed(labels="nowhere.gpkg"),
        ("regions.vol.labels: labels file not found: nowhere.gpkg",),
        "config",
    ),
    "model-without-card": Case(
        with_model(lambda d, _: (d / "model_card.json").unlink()),
        ("predict.model: model card not found beside the model: model/model_card.json",),
        "config",
        needs_model=True,
    ),
    # the dem step
    "corrupt-geotiff": Case(
        bad_dem(garbage), ("DEM of region 'vol'", "dem.tif", "not a readable raster"), "dem"
    ),
    "zero-byte-dem": Case(
        bad_dem(lambda p: p.write_bytes(b"")),
        ("DEM of region 'vol'", "dem.tif", "file is empty (0 bytes)"),
        "dem",
    ),
    "dem-without-crs": Case(
        bad_dem(lambda p: write_dem(p, crs=None)),
        ("DEM of region 'vol'", "dem.tif", "raster has no CRS"),
        "dem",
    ),
    "dem-all-nodata": Case(
        bad_dem(lambda p: write_dem(p, edit=all_nodata)),
        ("DEM of region 'vol'", "no valid elevation in", "dem.tif"),
        "dem",
    ),
    "bbox-outside-dem": Case(
        region_changed(bbox=[-150.0, 10.0, -149.9, 10.1]),
        ("DEM of region 'vol'", "bbox [-150.0, 10.0, -149.9, 10.1] does not intersect", "dem.tif"),
        "dem",
    ),
    "bbox-outside-downloaded-tile": Case(
        seeded_tile_of_another_place,
        ("DEM of region 'vol'", "does not intersect", "resources/dem/tiles/USGS_13_n20w156.tif"),
        "dem",
        target=paths.DEM.format(region="vol"),
    ),
    "impossible-synthetic-region": Case(
        lambda w, m: {"regions": {"vol": SYNTHETIC_CROWDED}, "tiling": TILING},
        ("region 'vol'", "synthetic.n_cones"),
        "dem",
    ),
    # the mask step
    "labels-no-features": Case(
        bad_labels([]), ("labels of region 'vol'", "labels.gpkg", "no features"), "masks"
    ),
    "labels-outside-dem": Case(
        bad_labels([(900000, 100000)]), ("labels of region 'vol'", "labels.gpkg", "outside the DEM"), "masks"
    ),
    "points-without-radius": Case(
        bad_labels([CONE], radius=None),
        ("labels of region 'vol'", "labels.gpkg", "need the attribute 'radius_m'", "radius_field"),
        "masks",
    ),
    "negative-radius": Case(
        bad_labels([CONE], radius=-5.0), ("labels of region 'vol'", "labels.gpkg", "negative"), "masks"
    ),
    "corrupt-labels": Case(
        lambda w, m: (standard()(w, m), garbage(w / "labels.gpkg"))[0],
        ("labels of region 'vol'", "labels.gpkg", "not a readable vector file"),
        "masks",
    ),
    # the tiles step
    "region-smaller-than-one-tile": Case(
        lambda w, m: {"regions": {"vol": SYNTHETIC_SMALL}, "tiling": {"size": 128, "step": 64}},
        ("region 'vol'", "smaller than one tile", "tiling.size"),
        "tiles",
    ),
    # the predict step, with the tiny run's model
    "model-wrong-channel-count": Case(
        with_model(untouched, features={"channels": ["slope", "hillshade"]}),
        (
            "model model/model.keras",
            "trained on channels [local_relief, slope, hillshade]",
            "has [slope, hillshade]",
        ),
        "predictions",
        target=paths.PROBABILITY.format(region="vol"),
        needs_model=True,
    ),
    # a given model keeps its own tile size (tiling.size is for this config's training tiles)
    "model-of-another-tile-size": Case(
        with_model(untouched, tiling=TILING),
        None,
        "predictions",
        target=paths.PROBABILITY.format(region="vol"),
        needs_model=True,
        check=check_probability,
    ),
    "corrupt-model": Case(
        with_model(lambda d, _: garbage(d / "model.keras")),
        ("model/model.keras", "not a readable Keras model"),
        "predictions",
        target=paths.PROBABILITY.format(region="vol"),
        needs_model=True,
    ),
    # must work
    "dem-with-nan-holes": Case(
        bad_dem(lambda p: write_dem(p, nodata=None, edit=nan_holes)), None, "tiles", check=check_nan_holes
    ),
    "geographic-crs-dem": Case(geographic, None, "tiles", check=check_geographic),
    "invalid-label-geometries": Case(invalid_geometries, None, "tiles", check=check_repaired),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    case = CASES[name]
    trained = (
        output(request.getfixturevalue("tiny_run"), paths.MODEL_DIR, model="unet")
        if case.needs_model
        else None
    )
    cfg = case.make(tmp_path, trained)
    proc = snakemake(
        tmp_path, case.target, "--configfile", write_config(tmp_path, "c.yaml", cfg), check=False
    )
    if case.expected is None:
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert case.check is not None
        case.check(tmp_path)
        return
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cinderseg: error:")]
    assert lines, proc.stderr[-3000:]
    for text in case.expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if case.step == "config":
        assert not (tmp_path / paths.RESULTS).exists()
    else:
        assert not [p for p in outputs(tmp_path) if p.startswith(f"{case.step}/")]
    assert temporaries(tmp_path) == []


def test_the_table_covers_the_cases_asked_for() -> None:
    assert len(CASES) >= 20
    assert sum(case.expected is None for case in CASES.values()) == 4


def test_srtm_like_files_with_voids_and_lonlat_labels_just_work(tmp_path: Path) -> None:
    """Geographic int16 DEM in two files, SRTM voids, point labels in EPSG:4326: reprojected to UTM."""
    params = SyntheticParams(seed=5, width_px=320, height_px=256, n_cones=10, resolution_m=30.0)
    example = write_srtm_like_example(tmp_path / "data", params=params)
    with rasterio.open(example["west"]) as src:
        assert src.crs.to_epsg() == 4326 and src.dtypes[0] == "int16"
    region = {
        "source": "file",
        "dem": [str(example["west"].relative_to(tmp_path)), str(example["east"].relative_to(tmp_path))],
        "nodata": -32768,
        "role": "train",
        "labels": str(example["labels"].relative_to(tmp_path)),
        "resolution_m": 30,
    }
    cfg = {
        "regions": {"srtm": region},
        "tiling": {"size": 128, "step": 64, "split_block_px": 128},
        # the default run trains a model too: a tiny one here
        "model": {"encoder": "unet_small", "base_filters": 8},
        "train": {"epochs": 1, "batch_size": 4},
    }
    snakemake(tmp_path, "--configfile", write_config(tmp_path, "c.yaml", cfg))
    with rasterio.open(output(tmp_path, paths.DEM, region="srtm")) as dem:
        assert dem.crs.to_epsg() == 32605
        z = dem.read(1, masked=True)
    with rasterio.open(output(tmp_path, paths.MASK, region="srtm")) as mask:
        cones = mask.read(1) == 1
    # The voids were small: filled. The cones cover about the labelled area (pi r^2 per cone).
    interior = z[20:-20, 20:-20]
    assert not np.ma.getmaskarray(interior).any()
    labelled = gpd.read_file(example["labels"])
    expected_px = float(np.sum(np.pi * labelled["radius_m"] ** 2)) / 30.0**2
    assert cones.sum() == pytest.approx(expected_px, rel=0.1)
    x, y, channels = load_tiles(output(tmp_path, paths.TILES, region="srtm"))
    assert x.shape[0] > 0 and y.sum() > 0 and list(channels) == ["local_relief", "slope", "hillshade"]
