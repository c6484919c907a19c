# Configuration, validated once at start-up, and the input functions of the rules.
import os
import sys
from pathlib import Path

from cinderseg.config import (
    check_input_files,
    check_writable,
    labelled_regions,
    model_path,
    region_names,
    validate_config,
)
from cinderseg.download import tile_paths
from cinderseg.errors import ConfigError
from cinderseg.folds import folds_from_config
from snakemake.exceptions import WorkflowError


def _config_source():
    """The config file(s) named in error messages: those from the command line, else config.yaml."""
    files = list(workflow.overwrite_configfiles) or list(workflow.configfiles)
    return ", ".join(str(f) for f in files) or "config"


try:
    config = validate_config(config, source=_config_source())
    check_input_files(config, source=_config_source())
    check_writable(["results", "resources"])
except ConfigError as err:
    sys.exit(f"cinderseg: error: {err}")

# The checkout, for the post-deploy scripts of envs/ that install cinderseg into conda environments
# (Snakemake runs them in its own environment). Set here, never read: no `envvars:` needed.
os.environ.update(CINDERSEG_ROOT=str(Path(workflow.basedir).resolve()))

REGIONS = list(config["regions"])
LABELLED = labelled_regions(config)
SYNTHETIC = region_names(config, source="synthetic")
FILE_BASED = region_names(config, source="file")
USGS3DEP = region_names(config, source="usgs3dep")
TRAINING = region_names(config, role="train")
MODEL = config["model"]["name"]
# Cross-validation folds (the crossval section) by name: <region>-b<i> (spatial), loro-<region>.
FOLDS = folds_from_config(config)
SPATIAL_FOLDS = [name for name, fold in FOLDS.items() if fold.kind == "spatial"]
# The error of the crossval target without folds (raised by its input function).
NO_FOLDS = (
    "the crossval target needs folds: add a crossval section with spatial_folds or "
    "leave_one_region_out to the config (see README.md, Cross-region evaluation)"
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
MODEL_FILES = ["model.keras", "history.csv", "training_curves.png", "model_card.json"]
# The model the predict step applies: predict.model if set ('pretrained': the shipped one), else the
# one trained by this workflow.
PREDICT_MODEL = (
    str(model_path(config["predict"]["model"]))
    if config["predict"].get("model")
    else f"results/models/{MODEL}/model.keras" if TRAINING else None
)
CONE_FIGURES = ["size_frequency", "height_vs_diameter", "cone_map"]
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
        return f"results/synthetic/{region}_cones.gpkg"
    return labels


def labels_file(wildcards):
    """The region's labels (region_labels of the region wildcard)."""
    return region_labels(wildcards.region)


def training_tiles(wildcards):
    """Tiles (.npz) of all regions with role 'train', in config order: the train step's input."""
    return expand("results/tiles/{region}.npz", region=TRAINING)


def training_manifests(wildcards):
    """Tile manifests (.csv) of all regions with role 'train', in the order of training_tiles."""
    return expand("results/tiles/{region}.csv", region=TRAINING)


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


def _fold_training_files(fold, ext):
    """Tiles (ext .npz) or manifests (.csv) a fold trains on: a spatial fold's own cut; for a
    leave-one-region-out fold each training region cut as a role 'train' region (its tiles step's
    output when it has role 'train', else a cut of its own under results/crossval/tiles/as_train/).
    """
    if fold.kind == "spatial":
        return [f"results/crossval/tiles/{fold.name}.{ext}"]
    return [
        (
            f"results/tiles/{region}.{ext}"
            if config["regions"][region]["role"] == "train"
            else f"results/crossval/tiles/as_train/{region}.{ext}"
        )
        for region in fold.training_regions
    ]


def fold_training_tiles(wildcards):
    """Tiles (.npz) a fold's model trains on, in the order of fold_training_regions."""
    return _fold_training_files(FOLDS[wildcards.fold], "npz")


def fold_training_manifests(wildcards):
    """Tile manifests (.csv) of fold_training_tiles, in the same order."""
    return _fold_training_files(FOLDS[wildcards.fold], "csv")


def fold_resolutions(wildcards):
    """Pixel size in metres of each region a fold trains on (for the model card)."""
    return {
        region: config["regions"][region]["resolution_m"]
        for region in FOLDS[wildcards.fold].training_regions
    }


def held_out_file(pattern):
    """An input function: ``pattern`` (e.g. "results/dem/{region}.tif") for the fold's held-out region."""
    return lambda wildcards: pattern.format(region=fold_held_out_region(wildcards))


def held_out_labels(wildcards):
    """The labels of the fold's held-out region (region_labels)."""
    return region_labels(fold_held_out_region(wildcards))


def held_out_radius_field(wildcards):
    """The radius attribute of the held-out region's point labels."""
    return config["regions"][fold_held_out_region(wildcards)]["radius_field"]


def crossval_outputs(wildcards):
    """Targets of the crossval target: the per-fold table and the summary of all folds."""
    if not FOLDS:
        raise WorkflowError(NO_FOLDS)
    return [
        "results/metrics/crossval_folds.csv",
        "results/metrics/crossval_summary.csv",
    ]


def all_outputs(wildcards):
    """Targets of the default target (all): every region's DEM and features, masks and tiles of labelled regions."""
    targets = expand("results/features/{region}.tif", region=REGIONS)
    targets += expand("results/masks/{region}.tif", region=LABELLED)
    targets += expand("results/tiles/{region}.npz", region=LABELLED)
    targets += expand("results/overview/{region}.png", region=LABELLED)
    if TRAINING:
        targets += expand(
            "results/models/{model}/{file}", model=MODEL, file=MODEL_FILES
        )
    if PREDICT_MODEL is not None:
        targets += expand("results/predictions/{region}.tif", region=REGIONS)
        targets += expand("results/cones/{region}.gpkg", region=REGIONS)
        targets += expand("results/cones/{region}_summary.csv", region=REGIONS)
        targets += expand(
            "results/figures/{region}/{figure}.png", region=REGIONS, figure=CONE_FIGURES
        )
        targets += expand("results/metrics/{region}.json", region=LABELLED)
        targets += expand("results/figures/{region}/errors.png", region=LABELLED)
        if LABELLED:
            targets.append("results/metrics/summary.csv")
    if FOLDS:
        targets += crossval_outputs(wildcards)
    return targets
