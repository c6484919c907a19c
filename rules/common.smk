# Configuration, validated once at start-up, and the input functions of the rules.
import os
import sys
from pathlib import Path

from cinderseg.workflow import paths
from cinderseg.workflow.benchmark import count_all_cpu_time
from cinderseg.workflow.config import (
    check_input_files,
    check_writable,
    labelled_regions,
    model_path,
    region_names,
    typed_overrides,
    validate_config,
)
from cinderseg.workflow.maptiles import tiled_regions
from cinderseg.terrain.download import tile_paths
from cinderseg.core.errors import ConfigError
from cinderseg.data.folds import folds_from_config
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config


def _config_source():
    """The config file(s) named in error messages: those from the command line, else config.yaml;
    and --config when values were given there."""
    files = list(workflow.overwrite_configfiles) or list(workflow.configfiles)
    names = [str(f) for f in files] + (
        ["--config"] if workflow.config_settings.config else []
    )
    return ", ".join(names) or "config"


try:
    # --config values arrive as strings (nested ones always): typed by the schema, in place, so
    # that the scripts' snakemake.config holds them typed too.
    update_config(config, typed_overrides(workflow.config_settings.config))
    config = validate_config(config, source=_config_source())
    check_input_files(config, source=_config_source())
    check_writable([paths.RESULTS, paths.RESOURCES])
    # Regions mapped in tiles (regions.<name>.tiles): each one's grid and tiles, planned from its DEM
    # files' headers or its bbox (cinderseg.workflow.maptiles; rules/maptiles.smk).
    TILED = tiled_regions(config)
except ConfigError as err:
    sys.exit(f"cinderseg: error: {err}")

# Benchmark tables count every CPU second of a job (Snakemake's sampling misses the last ones).
count_all_cpu_time()

# The checkout, for the post-deploy scripts of envs/ that install cinderseg into conda environments
# (Snakemake runs them in its own environment). Set here, never read: no `envvars:` needed.
os.environ.update(CINDERSEG_ROOT=str(Path(workflow.basedir).resolve()))

REGIONS = list(config["regions"])
LABELLED = labelled_regions(config)
SYNTHETIC = region_names(config, source="synthetic")
SCENES = region_names(config, source="scene")
FILE_BASED = region_names(config, source="file")
USGS3DEP = region_names(config, source="usgs3dep")
TRAINING = region_names(config, role="train")
UNTILED = [name for name in REGIONS if name not in TILED]
MODEL = config["model"]["name"]
# Cross-validation folds (the crossval section) by name: <region>-b<i> (spatial), loro-<region>.
FOLDS = folds_from_config(config)
SPATIAL_FOLDS = [name for name, fold in FOLDS.items() if fold.kind == "spatial"]
# The error of the crossval target without folds (its input function stops the run with it).
NO_FOLDS = (
    "the crossval target needs folds: add a crossval section with spatial_folds or "
    "leave_one_region_out to the config (see docs/configuration.md, crossval)"
)


def cores_given():
    """The cores given to Snakemake (--cores), or None: a cluster run needs none."""
    try:
        return workflow.cores
    except WorkflowError:
        return None


# TensorFlow threads of the train and predict steps: all cores given to Snakemake, at most 16;
# 8 on a cluster without --cores (profiles/slurm sets them with set-threads).
TRAIN_THREADS = max(1, min(cores_given() or 8, 16))
# Processes of the vectorize step's second stage (the classical detector's outlines and the
# candidates' measurements): the cores given, at most 4; 2 on a cluster without --cores.
VECTORIZE_THREADS = max(1, min(cores_given() or 2, 4))
# The model the predict step applies: predict.model if set ('pretrained': the shipped one), else the
# one trained by this workflow.
PREDICT_MODEL = (
    str(model_path(config["predict"]["model"]))
    if config["predict"].get("model")
    else paths.MODEL_FILE.format(model=MODEL, file="model.keras") if TRAINING else None
)
if PREDICT_MODEL is None:
    print(
        "cinderseg: warning: no region has role 'train' and predict.model is not set: no model to "
        "predict with, so only DEMs, features, masks and tiles are made",
        file=sys.stderr,
    )


def alternation(names):
    """A regex matching exactly these names (none: a pattern that never matches)."""
    return "|".join(names) if names else "(?!x)x"


def region_settings(wildcards):
    """The region's own config block: a rule's params, so editing a region reruns only its jobs."""
    return config["regions"][wildcards.region]


def dem_sources(wildcards):
    """The DEM file(s) of a 'file' region, as configured (one path or a list); for a 'usgs3dep'
    region the cached 3DEP tiles covering its bbox (names computed from the bbox, no network).
    """
    region = config["regions"][wildcards.region]
    if region["source"] == "usgs3dep":
        return tile_paths(region["bbox"], region["product"])
    dem = region["dem"]
    return [dem] if isinstance(dem, str) else list(dem)


def region_labels(region):
    """A region's labels: its vector file, or the true cones written with a synthetic DEM."""
    labels = config["regions"][region]["labels"]
    if labels == "synthetic":
        return paths.SYNTHETIC_CONES.format(region=region)
    return labels


def radius_field(wildcards):
    """The radius attribute of the region's point labels."""
    return config["regions"][wildcards.region]["radius_field"]


def region_figure(figure):
    """A region's figure (paths.FIGURE) named ``figure``, the region left a wildcard."""
    return paths.FIGURE.format(region="{region}", figure=figure)


def model_file(name):
    """A file of the trained model (paths.MODEL_FILE), the model left a wildcard."""
    return paths.MODEL_FILE.format(model="{model}", file=name)


def fold_model_file(name):
    """A file of a fold's model (paths.FOLD_MODEL_FILE), the fold left a wildcard."""
    return paths.FOLD_MODEL_FILE.format(fold="{fold}", file=name)


def fold_figure(figure):
    """A fold's figure (paths.FOLD_FIGURE) named ``figure``, the fold left a wildcard."""
    return paths.FOLD_FIGURE.format(fold="{fold}", figure=figure)


def scene_donors(wildcards):
    """The DEMs and labels of a scene's donor regions, in scene.donors order."""
    donors = config["regions"][wildcards.region]["scene"]["donors"]
    return {
        "dems": [paths.DEM.format(region=donor) for donor in donors],
        "labels": [region_labels(donor) for donor in donors],
    }


def scene_donor_radius_fields(wildcards):
    """The radius attribute of each donor's point labels, in scene.donors order."""
    donors = config["regions"][wildcards.region]["scene"]["donors"]
    return [config["regions"][donor]["radius_field"] for donor in donors]


def labels_file(wildcards):
    """The region's labels (region_labels of the region wildcard)."""
    return region_labels(wildcards.region)


def training_tiles(wildcards):
    """Tiles (.npz) of all regions with role 'train', in config order: the train step's input."""
    return expand(paths.TILES, region=TRAINING)


def training_manifests(wildcards):
    """Tile manifests (.csv) of all regions with role 'train', in the order of training_tiles."""
    return expand(paths.MANIFEST, region=TRAINING)


def initial_model_files(wildcards):
    """The model (and its card) whose weights train.initial_model starts training from; none if unset."""
    initial = config["train"].get("initial_model")
    if not initial:
        return []
    path = model_path(initial)
    return [str(path), str(path.with_name("model_card.json"))]


def prediction_model(wildcards):
    """The model file the predict step applies and its model card beside it."""
    return {
        "model": PREDICT_MODEL,
        "card": str(Path(PREDICT_MODEL).with_name("model_card.json")),
    }


def expected_tile_size(wildcards):
    """tiling.size, which the model trained here has; None for a given predict.model (its own tiles)."""
    return None if config["predict"].get("model") else config["tiling"]["size"]


def predict_settings(wildcards):
    """The predict section without the model path (an input, not a setting)."""
    return {k: v for k, v in config["predict"].items() if k != "model"}


def region_role(wildcards):
    """The region's role: train, test or predict."""
    return config["regions"][wildcards.region]["role"]


def per_attempt(amount):
    """A resource (mem_mb, runtime in minutes) sized from the benchmarks, doubled on each retry: a
    cluster job killed for memory or time is resubmitted (--retries) asking for more."""
    return lambda wildcards, attempt: amount * 2 ** (attempt - 1)


def train_runtime(wildcards, attempt):
    """Runtime in minutes of the train step: the time budget plus a margin, else a day; doubled on
    each retry (training resumes where the killed job stopped)."""
    budget = config["train"]["max_minutes"]
    minutes = int(budget * 1.25) + 30 if budget else 24 * 60
    return minutes * 2 ** (attempt - 1)


def fold_settings(wildcards):
    """The fold as plain data (name, kind, held-out region, training regions, block grid, gap_m)."""
    return FOLDS[wildcards.fold].as_params()


def fold_held_out_region(wildcards):
    """The region a fold holds out (all of it, or one block of it) and scores."""
    return FOLDS[wildcards.fold].held_out_region


def fold_training_regions(wildcards):
    """The regions a fold's model trains on: its own region (spatial) or the other listed ones (loro)."""
    return list(FOLDS[wildcards.fold].training_regions)


def _fold_training_files(fold, fold_cut, own_cut, as_train_cut):
    """Tiles or manifests a fold trains on: a spatial fold's own cut (template ``fold_cut``); for a
    leave-one-region-out fold each training region cut as a role 'train' region (its tiles step's
    output ``own_cut`` when it has role 'train', else a cut of its own, ``as_train_cut``).
    """
    if fold.kind == "spatial":
        return [fold_cut.format(fold=fold.name)]
    return [
        (
            own_cut if config["regions"][region]["role"] == "train" else as_train_cut
        ).format(region=region)
        for region in fold.training_regions
    ]


def fold_training_tiles(wildcards):
    """Tiles (.npz) a fold's model trains on, in the order of fold_training_regions."""
    return _fold_training_files(
        FOLDS[wildcards.fold], paths.FOLD_TILES, paths.TILES, paths.AS_TRAIN_TILES
    )


def fold_training_manifests(wildcards):
    """Tile manifests (.csv) of fold_training_tiles, in the same order."""
    return _fold_training_files(
        FOLDS[wildcards.fold],
        paths.FOLD_MANIFEST,
        paths.MANIFEST,
        paths.AS_TRAIN_MANIFEST,
    )


def fold_resolutions(wildcards):
    """Pixel size in metres of each region a fold trains on (for the model card)."""
    return {
        region: config["regions"][region]["resolution_m"]
        for region in FOLDS[wildcards.fold].training_regions
    }


def held_out_file(pattern):
    """An input function: ``pattern`` (e.g. paths.DEM) for the fold's held-out region."""
    return lambda wildcards: pattern.format(region=fold_held_out_region(wildcards))


def held_out_labels(wildcards):
    """The labels of the fold's held-out region (region_labels)."""
    return region_labels(fold_held_out_region(wildcards))


def held_out_radius_field(wildcards):
    """The radius attribute of the held-out region's point labels."""
    return config["regions"][fold_held_out_region(wildcards)]["radius_field"]


def crossval_outputs(wildcards):
    """Targets of the crossval target: the per-fold table and the summary of all folds. Without
    folds the run stops here with one line (SystemExit passes Snakemake's input-function handling,
    and the DAG is built before any job runs or the working directory is locked)."""
    if not FOLDS:
        sys.exit(f"cinderseg: error: {_config_source()}: {NO_FOLDS}")
    return [paths.CROSSVAL_FOLDS, paths.CROSSVAL_SUMMARY]


def all_outputs(wildcards):
    """Targets of the default target (all): every region's DEM and features (a tiled region's DEM and
    its tiles' features), masks of labelled regions and tiles of those mapped whole."""
    targets = expand(paths.FEATURES, region=UNTILED)
    for name, plan in TILED.items():
        targets += expand(paths.TILE_FEATURES, region=name, maptile=plan.names)
        targets.append(paths.DEM.format(region=name))
    targets += expand(paths.MASK, region=LABELLED)
    targets += expand(paths.TILES, region=[r for r in LABELLED if r in UNTILED])
    targets += expand(paths.OVERVIEW, region=[r for r in LABELLED if r in UNTILED])
    if TRAINING:
        targets += expand(paths.MODEL_FILE, model=MODEL, file=paths.MODEL_FILES)
    if PREDICT_MODEL is not None:
        targets += expand(paths.PROBABILITY, region=REGIONS)
        targets += expand(paths.CONES, region=REGIONS)
        targets += expand(paths.CONE_SUMMARY, region=REGIONS)
        targets += expand(paths.FIGURE, region=REGIONS, figure=paths.CONE_FIGURES)
        targets += expand(paths.METRICS, region=LABELLED)
        targets += expand(paths.FIGURE, region=LABELLED, figure="errors")
        if LABELLED:
            targets += [paths.METRICS_SUMMARY, paths.MISSES_SUMMARY]
    if FOLDS:
        targets += crossval_outputs(wildcards)
    return targets


# --- regions mapped in tiles (rules/maptiles.smk)


def map_tile(wildcards):
    """The tile (cinderseg.terrain.maptiles.MapTile) of the region and maptile wildcards."""
    return TILED[wildcards.region].tile(wildcards.maptile)


def tile_label(wildcards):
    """The name of a tile in messages and logs: '<region> tile <maptile>'."""
    return f"{wildcards.region} tile {wildcards.maptile}"


def tile_dem_sources(wildcards):
    """The DEM file(s) a tile's dem step reads: a 'file' region's files, or those of the region's
    cached 3DEP tiles (covering its bbox) that meet the map tile."""
    region = config["regions"][wildcards.region]
    if region["source"] != "usgs3dep":
        return dem_sources(wildcards)
    meeting = tile_paths(
        TILED[wildcards.region].lonlat(map_tile(wildcards)), region["product"]
    )
    return [p for p in tile_paths(region["bbox"], region["product"]) if p in meeting]


def tile_grid(wildcards):
    """A tile's window of the region's grid: its CRS and bounds (metres), the dem step's target."""
    plan = TILED[wildcards.region]
    return {
        "crs": plan.grid.crs.to_string(),
        "bounds": list(map_tile(wildcards).bounds(plan.grid)),
    }


def region_plan(wildcards):
    """The region's grid and tiles as plain data (the mosaics' params)."""
    return TILED[wildcards.region].as_params()


def tile_files(pattern):
    """An input function: ``pattern`` (e.g. paths.TILE_DEM) for every tile of the region, row-major."""
    return lambda wildcards: expand(
        pattern, region=wildcards.region, maptile=TILED[wildcards.region].names
    )
