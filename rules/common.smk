# Configuration, validated once at start-up, and the input functions of the rules.
import sys

from cinderseg.config import (
    check_input_files,
    labelled_regions,
    region_names,
    validate_config,
)
from cinderseg.errors import ConfigError


def _config_source():
    """The config file(s) named in error messages: those from the command line, else config.yaml."""
    files = list(workflow.overwrite_configfiles) or list(workflow.configfiles)
    return ", ".join(str(f) for f in files) or "config"


try:
    config = validate_config(config, source=_config_source())
    check_input_files(config, source=_config_source())
except ConfigError as err:
    sys.exit(f"cinderseg: error: {err}")

REGIONS = list(config["regions"])
LABELLED = labelled_regions(config)
SYNTHETIC = region_names(config, source="synthetic")
FILE_BASED = region_names(config, source="file")


def alternation(names):
    """A regex matching exactly these names (none: a pattern that never matches)."""
    return "|".join(names) if names else "(?!x)x"


def region_settings(wildcards):
    """The region's own config block: a rule's params, so editing a region reruns only its jobs."""
    return config["regions"][wildcards.region]


def dem_sources(wildcards):
    """The DEM file(s) of a 'file' region, as configured (one path or a list)."""
    dem = config["regions"][wildcards.region]["dem"]
    return [dem] if isinstance(dem, str) else list(dem)


def labels_file(wildcards):
    """The region's labels: its vector file, or the true cones written with a synthetic DEM."""
    labels = config["regions"][wildcards.region]["labels"]
    if labels == "synthetic":
        return f"results/synthetic/{wildcards.region}_cones.gpkg"
    return labels


def all_outputs(wildcards):
    """Targets of the default target (all): every region's DEM and features, masks and tiles of labelled regions."""
    targets = expand("results/features/{region}.tif", region=REGIONS)
    targets += expand("results/masks/{region}.tif", region=LABELLED)
    targets += expand("results/tiles/{region}.npz", region=LABELLED)
    targets += expand("results/overview/{region}.png", region=LABELLED)
    return targets
