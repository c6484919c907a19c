"""Where the workflow writes: one path template per product, the one place that names ``results/``.

Templates hold Snakemake wildcards in braces (``{region}``, ``{maptile}``, ``{model}``, ``{fold}``,
``{figure}``, ``{file}``): the rules use them as they are (outputs, inputs, logs, benchmarks),
input functions and tests fill them with :meth:`str.format` or Snakemake's ``expand``. Paths are
relative to the workflow's working directory. Rasters are GeoTIFFs on the region's metric grid,
vector layers GeoPackages in the same CRS.
"""

from __future__ import annotations

from pathlib import PurePosixPath

#: Everything a run makes, and the download cache shared by all regions.
RESULTS = "results"
RESOURCES = "resources"

# One region's products ({region}: a name of the config's regions section).
DEM = f"{RESULTS}/dem/{{region}}.tif"
SYNTHETIC_CONES = f"{RESULTS}/synthetic/{{region}}_cones.gpkg"
FEATURES = f"{RESULTS}/features/{{region}}.tif"
MASK = f"{RESULTS}/masks/{{region}}.tif"
TILES = f"{RESULTS}/tiles/{{region}}.npz"
MANIFEST = f"{RESULTS}/tiles/{{region}}.csv"
OVERVIEW = f"{RESULTS}/overview/{{region}}.png"
PROBABILITY = f"{RESULTS}/predictions/{{region}}.tif"
CONES = f"{RESULTS}/cones/{{region}}.gpkg"
CONE_SUMMARY = f"{RESULTS}/cones/{{region}}_summary.csv"
BASELINE = f"{RESULTS}/baseline/{{region}}.gpkg"
METRICS = f"{RESULTS}/metrics/{{region}}.json"
#: A region's figure ({figure}: one of CONE_FIGURES, or errors).
FIGURE = f"{RESULTS}/figures/{{region}}/{{figure}}.png"
CONE_FIGURES = ("size_frequency", "height_vs_diameter", "cone_map")
METRICS_SUMMARY = f"{RESULTS}/metrics/summary.csv"
#: Where each method lost the labelled cones it missed, per region (cinderseg.assess.misses).
MISSES_SUMMARY = f"{RESULTS}/metrics/misses.csv"

# A region mapped in tiles (regions.<name>.tiles; {maptile}: r<row>c<col>): each tile's products on
# its window of the region's grid; the region's own DEM, PROBABILITY and CONES are mosaicked from them.
MAP_TILE = f"{RESULTS}/map_tiles/{{region}}/{{maptile}}"
TILE_DEM = f"{MAP_TILE}/dem.tif"
TILE_FEATURES = f"{MAP_TILE}/features.tif"
TILE_PROBABILITY = f"{MAP_TILE}/probability.tif"
TILE_CONES = f"{MAP_TILE}/cones.gpkg"
TILE_BASELINE = f"{MAP_TILE}/baseline.gpkg"

# The model trained by the workflow ({model}: model.name) and its files ({file}: one of MODEL_FILES).
MODEL_DIR = f"{RESULTS}/models/{{model}}"
MODEL_FILE = f"{MODEL_DIR}/{{file}}"
MODEL_FILES = ("model.keras", "history.csv", "training_curves.png", "model_card.json")

# Cross-validation ({fold}: <region>-b<i> or loro-<region>): the same products, per fold.
CROSSVAL = f"{RESULTS}/crossval"
FOLD_TILES = f"{CROSSVAL}/tiles/{{fold}}.npz"
FOLD_MANIFEST = f"{CROSSVAL}/tiles/{{fold}}.csv"
#: A region's tiles cut as for a role 'train' region, for leave-one-region-out training.
AS_TRAIN_TILES = f"{CROSSVAL}/tiles/as_train/{{region}}.npz"
AS_TRAIN_MANIFEST = f"{CROSSVAL}/tiles/as_train/{{region}}.csv"
FOLD_MODEL_FILE = f"{CROSSVAL}/models/{{fold}}/{{file}}"
FOLD_PROBABILITY = f"{CROSSVAL}/predictions/{{fold}}.tif"
FOLD_CONES = f"{CROSSVAL}/cones/{{fold}}.gpkg"
FOLD_CONE_SUMMARY = f"{CROSSVAL}/cones/{{fold}}_summary.csv"
FOLD_FIGURE = f"{CROSSVAL}/figures/{{fold}}/{{figure}}.png"
FOLD_METRICS = f"{RESULTS}/metrics/crossval/{{fold}}.json"
CROSSVAL_FOLDS = f"{RESULTS}/metrics/crossval_folds.csv"
CROSSVAL_SUMMARY = f"{RESULTS}/metrics/crossval_summary.csv"

#: One USGS 3DEP tile in the download cache ({product}: 13 or 1; {tile}: e.g. n20w156).
DEM_TILE = f"{RESOURCES}/dem/tiles/USGS_{{product}}_{{tile}}.tif"
#: The HTML report (``snakemake --report``).
REPORT = f"{RESULTS}/report.html"

LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"


def log(step: str, name: str) -> str:
    """The log of one job of ``step`` (``name`` may hold wildcards, e.g. ``"{region}"``)."""
    return f"{LOGS}/{step}/{name}.log"


def benchmark(step: str, name: str) -> str:
    """The benchmark table of one job of ``step``, named like its log (:func:`log_of_benchmark`)."""
    return f"{BENCHMARKS}/{step}/{name}.tsv"


def log_of_benchmark(path: str) -> str | None:
    """The log named like the benchmark table ``path`` (see :func:`benchmark`), None for another path."""
    parts = PurePosixPath(path).parts
    root = PurePosixPath(BENCHMARKS).parts
    if parts[: len(root)] != root or len(parts) < len(root) + 2 or not path.endswith(".tsv"):
        return None
    step = parts[len(root)]
    name = str(PurePosixPath(*parts[len(root) + 1 :]))[: -len(".tsv")]
    return log(step, name)
