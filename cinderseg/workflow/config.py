"""Configuration: JSON-schema validation with defaults, and the checks a schema cannot express.

Every error is a :class:`~cinderseg.core.errors.ConfigError` whose message is one line naming the
config file and the key, for example
``config.yaml: tiling.size: 200 is not a multiple of 32``.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cinderseg.assess.settings import EvaluateSettings
from cinderseg.cones.detector import BaselineSettings
from cinderseg.cones.settings import VectorizeSettings
from cinderseg.core.errors import ConfigError
from cinderseg.core.modelcard import MODEL_CARD, WEIGHT_KEYWORDS, model_path
from cinderseg.core.schema import load_schema, load_yaml, schema_error
from cinderseg.core.settings import ROLES_WITH_LABELS
from cinderseg.data.folds import folds_from_config
from cinderseg.data.scenes import SceneParams
from cinderseg.data.tiles import TilingSettings
from cinderseg.nn.settings import ModelSettings, PredictSettings, TrainSettings
from cinderseg.terrain.download import DownloadSettings, tiles_for_bbox
from cinderseg.terrain.features import FeatureSettings
from cinderseg.terrain.maptiles import MIN_TILE_PX
from cinderseg.terrain.synthetic import SyntheticParams


def validate_config(
    config: Mapping[str, Any], *, source: str = "config", schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Validate ``config`` against the schema, fill defaults and run the cross-key checks.

    Returns a new dict with defaults filled in; ``config`` itself is not modified.
    ``source`` names the config file in error messages.
    """
    cfg: dict[str, Any] = copy.deepcopy(dict(config)) if config else {}
    schema = dict(schema) if schema is not None else load_schema()
    regions = cfg.get("regions")
    explicit_product: set[str] = set()
    if isinstance(regions, dict):
        for name, region in regions.items():
            # Synthetic regions always get a `synthetic` block, so its defaults are filled in.
            if isinstance(region, dict) and region.get("source") in ("synthetic", "scene"):
                region.setdefault(region["source"], {})
            if isinstance(region, dict) and "product" in region:
                explicit_product.add(name)
                if type(region["product"]) is int and region["product"] == 1:  # YAML `product: 1`
                    region["product"] = "1"
    message = schema_error(cfg, schema)
    if message:
        raise ConfigError(f"{source}: {message}")
    for name, region in cfg["regions"].items():
        # `product` is a usgs3dep setting: its default stays off other regions (and out of their params).
        if region["source"] != "usgs3dep" and name not in explicit_product:
            region.pop("product", None)
    try:
        check_consistency(cfg)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    return cfg


#: Each step's settings class by config section: it holds its section's checks across keys, so
#: that every rule lives once (the workflow builds each class from its section at start-up).
SECTION_SETTINGS: dict[str, Callable[[Any], Any]] = {
    "download": DownloadSettings.from_config,
    "features": FeatureSettings.from_config,
    "tiling": TilingSettings.from_config,
    "model": ModelSettings.from_config,
    "train": TrainSettings.from_config,
    "predict": PredictSettings.from_config,
    "vectorize": VectorizeSettings.from_config,
    "baseline": BaselineSettings.from_config,
    "evaluate": EvaluateSettings.from_config,
}


def check_sections(cfg: Mapping[str, Any]) -> None:
    """Build every step's settings from its section: their checks across keys (tiling step and size,
    predict overlap and crop, train ranges, increasing evaluate classes, ...) run once, here too."""
    for section, build in SECTION_SETTINGS.items():
        build(cfg.get(section, {}))


GENERATED = ("synthetic", "scene")
"""Sources whose DEM is generated, with their labels ('synthetic': the cones they place)."""


def _check_source(key: str, region: Mapping[str, Any]) -> None:
    """The keys a region's source needs, and those it does not use."""
    source = region["source"]
    if source == "file" and "dem" not in region:
        raise ConfigError(f"{key}.dem: required for source 'file' (a DEM path or a list of paths)")
    if source in GENERATED and "dem" in region:
        raise ConfigError(f"{key}.dem: not used with source '{source}'; remove it or use source 'file'")
    for block in GENERATED:
        if source != block and block in region:
            raise ConfigError(f"{key}.{block}: only allowed with source '{block}'")
    if source in GENERATED:
        for field in ("crs", "bbox", "nodata"):
            if field in region:
                raise ConfigError(
                    f"{key}.{field}: not used with source '{source}' (set {source}.crs / size instead)"
                )
    if source != "usgs3dep" and "product" in region:
        raise ConfigError(f"{key}.product: only used with source 'usgs3dep'")
    if source == "usgs3dep" and "dem" in region:
        raise ConfigError(
            f"{key}.dem: not used with source 'usgs3dep' (the tiles covering bbox are downloaded); "
            "remove it, or use source 'file' for your own files"
        )
    if source == "usgs3dep" and "bbox" not in region:
        raise ConfigError(
            f"{key}.bbox: required for source 'usgs3dep' ([west, south, east, north] in degrees; "
            "it chooses the tiles to download)"
        )


def _check_region(key: str, region: Mapping[str, Any], cfg: Mapping[str, Any]) -> None:
    """A region's labels, bbox and generator parameters."""
    if region["role"] in ROLES_WITH_LABELS and "labels" not in region:
        raise ConfigError(
            f"{key}.labels: required for role '{region['role']}' (a vector file or 'synthetic')"
        )
    if region.get("labels") == "synthetic" and region["source"] not in GENERATED:
        raise ConfigError(f"{key}.labels: 'synthetic' labels need source 'synthetic' or 'scene'")
    bbox = region.get("bbox")
    if bbox is not None:
        west, south, east, north = bbox
        if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
            raise ConfigError(
                f"{key}.bbox: {bbox} is not [west, south, east, north] in degrees "
                "with west < east, south < north"
            )
        max_tiles = cfg.get("download", {}).get("max_tiles", 16)
        n_tiles = len(tiles_for_bbox(bbox)) if region["source"] == "usgs3dep" else 0
        if n_tiles > max_tiles:
            raise ConfigError(
                f"{key}.bbox: {bbox} needs {n_tiles} tiles of 1 x 1 degree, more than "
                f"download.max_tiles ({max_tiles}); check the bbox, or raise download.max_tiles"
            )
    try:
        if region["source"] == "synthetic":
            SyntheticParams.from_config(region["synthetic"], region["resolution_m"])
        elif region["source"] == "scene":
            scene = SceneParams.from_config(region["scene"], region["resolution_m"])
            for donor in scene.donors:
                other = cfg["regions"].get(donor)
                if other is None or other["role"] not in ROLES_WITH_LABELS or other["source"] == "scene":
                    raise ConfigError(
                        f"scene.donors: {donor!r} is not a labelled region (role train or test, not a scene)"
                    )
    except ConfigError as err:
        raise ConfigError(f"{key}.{err}") from err


def check_consistency(cfg: Mapping[str, Any]) -> None:
    """Checks across keys and sections that JSON schema cannot express; ConfigError naming the key."""
    check_sections(cfg)
    for name, region in cfg["regions"].items():
        _check_source(f"regions.{name}", region)
        _check_region(f"regions.{name}", region, cfg)
        if "tiles" in region:
            check_tiles(cfg, name)
    folds_from_config(cfg)  # the crossval section: regions exist and are labelled, enough folds


#: Channels normalised by the whole region's elevation percentiles: a tiled region has none.
REGION_WIDE_CHANNELS = ("elevation", "clahe")


def check_tiles(cfg: Mapping[str, Any], name: str) -> None:
    """A region's ``tiles`` block fits: source file or usgs3dep, role predict or test, no channel
    normalised region-wide, not in a cross-validation fold, tiles of at least MIN_TILE_PX pixels."""
    key = f"regions.{name}.tiles"
    region = cfg["regions"][name]
    if region["source"] in GENERATED:
        raise ConfigError(
            f"{key}: not for source '{region['source']}' (generated whole); use source 'file' or 'usgs3dep'"
        )
    if region["role"] == "train":
        raise ConfigError(
            f"{key}: not for role 'train' (training regions are mapped whole); use role predict or test"
        )
    channels = [c for c in cfg.get("features", {}).get("channels", []) if c in REGION_WIDE_CHANNELS]
    if channels:
        raise ConfigError(
            f"{key}: features.channels {', '.join(channels)} are normalised by the whole region's elevation "
            "percentiles, which tiles do not share; map the region whole or use other channels"
        )
    crossval = cfg.get("crossval", {})
    if name in crossval.get("spatial_folds", {}) or name in crossval.get("leave_one_region_out", []):
        raise ConfigError(
            f"{key}: a region of the crossval section is mapped whole; remove tiles or the fold"
        )
    size_km, res = region["tiles"]["size_km"], region["resolution_m"]
    if size_km * 1000.0 / res < MIN_TILE_PX:
        raise ConfigError(f"{key}.size_km: {size_km:g} km is under {MIN_TILE_PX} px of {res:g} m")


def typed_overrides(overrides: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``--config`` values typed by the schema, for merging into the config before validation.

    Snakemake reads ``--config key=value`` with YAML's base loader: nested values (and top-level
    ones that are not numbers or booleans) arrive as strings. Each string where the schema expects
    no string is read as YAML (``"2"`` -> 2, ``"true"`` -> True, ``"[0.7, 1.4]"`` -> a list,
    ``"null"`` -> None); every other value is kept, so validation still names a wrong one.
    """
    schema = dict(schema) if schema is not None else load_schema()
    return {str(key): _typed(value, _property(schema, key), schema) for key, value in overrides.items()}


def _typed(value: Any, node: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    """``value`` typed by the schema ``node`` (see :func:`typed_overrides`)."""
    node = _resolved(node, root)
    types = _types(node, root)
    if isinstance(value, str) and types and "string" not in types:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return value if isinstance(parsed, str) else _typed(parsed, node, root)
    if isinstance(value, Mapping):
        return {str(k): _typed(v, _property(node, k), root) for k, v in value.items()}
    if isinstance(value, list):
        items = next((b.get("items") for b in _branches(node, root) if "items" in b), {})
        return [_typed(v, items, root) for v in value]
    return value


def _resolved(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """``node``, or the definition its ``$ref`` (``#/definitions/<name>``) names."""
    ref = node.get("$ref")
    return root["definitions"][ref.rsplit("/", 1)[-1]] if isinstance(ref, str) else node


def _branches(node: Mapping[str, Any], root: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The node itself and its ``anyOf`` alternatives, resolved."""
    return [node, *(_resolved(b, root) for b in node.get("anyOf", []))]


def _types(node: Mapping[str, Any], root: Mapping[str, Any]) -> set[str]:
    """JSON types the node allows (empty: unknown, e.g. a key the schema does not have)."""
    found: set[str] = set()
    for branch in _branches(node, root):
        kind = branch.get("type", [])
        found.update([kind] if isinstance(kind, str) else kind)
    return found


def _property(node: Mapping[str, Any], key: Any) -> Mapping[str, Any]:
    """The schema of ``node``'s property ``key``: a named property, else additionalProperties."""
    prop = node.get("properties", {}).get(key)
    if prop is None:
        extra = node.get("additionalProperties")
        prop = extra if isinstance(extra, Mapping) else {}
    return prop


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a config file."""
    return validate_config(load_yaml(path) or {}, source=str(path))


def region_names(cfg: Mapping[str, Any], *, source: str | None = None, role: str | None = None) -> list[str]:
    """Names of the configured regions, optionally only those of one source or role, in config order."""
    return [
        name
        for name, region in cfg["regions"].items()
        if (source is None or region["source"] == source) and (role is None or region["role"] == role)
    ]


def labelled_regions(cfg: Mapping[str, Any]) -> list[str]:
    """Regions with labels (role train or test), in config order."""
    return [name for name, region in cfg["regions"].items() if region["role"] in ROLES_WITH_LABELS]


def check_input_files(cfg: Mapping[str, Any], *, source: str = "config", base: str | Path = ".") -> None:
    """Fail early, with one line naming the region and file, when a configured input file is missing.

    Paths are relative to ``base`` (the workflow's working directory).
    """
    for name, region in cfg["regions"].items():
        dem = region.get("dem")
        for i, path in enumerate([dem] if isinstance(dem, str) else (dem or [])):
            key = f"regions.{name}.dem" + (f"[{i}]" if not isinstance(dem, str) else "")
            if not (Path(base) / path).is_file():
                raise ConfigError(f"{source}: {key}: DEM file not found: {path}")
        labels = region.get("labels")
        if labels and labels != "synthetic" and not (Path(base) / labels).exists():
            raise ConfigError(f"{source}: regions.{name}.labels: labels file not found: {labels}")
    initial = cfg.get("train", {}).get("initial_model")
    if initial:
        initial = model_path(initial, key=f"{source}: train.initial_model")
        if not (Path(base) / initial).is_file():
            raise ConfigError(f"{source}: train.initial_model: model file not found: {initial}")
        if not (Path(base) / initial).with_name(MODEL_CARD).is_file():
            raise ConfigError(
                f"{source}: train.initial_model: model card not found beside the model: "
                f"{Path(initial).with_name(MODEL_CARD)}"
            )
    model = cfg.get("predict", {}).get("model")
    if model:
        model = str(model_path(model, key=f"{source}: predict.model"))
    if model and not (Path(base) / model).is_file():
        raise ConfigError(f"{source}: predict.model: model file not found: {model}")
    if model and not (Path(base) / model).with_name(MODEL_CARD).is_file():
        raise ConfigError(
            f"{source}: predict.model: model card not found beside the model: "
            f"{Path(model).with_name(MODEL_CARD)} (give a model trained by cinderseg, with its card)"
        )
    settings = cfg.get("model", {})
    weights = settings.get("encoder_weights", "pretrained")
    if (
        any(region["role"] == "train" for region in cfg["regions"].values())
        and settings.get("encoder", "unet_small") != "unet_small"
        and isinstance(weights, str)
        and weights.strip().lower() not in WEIGHT_KEYWORDS
        and not (Path(base) / Path(weights).expanduser()).is_file()
    ):
        raise ConfigError(f"{source}: model.encoder_weights: weights file not found: {weights}")


def check_writable(dirs: Sequence[str | Path], *, base: str | Path = ".") -> None:
    """Fail early, with one line, when an output folder (``results``, ``resources``) cannot be written.

    A folder that does not exist yet is checked through its nearest existing parent (nothing is
    created). A small file is written and removed, so a read-only file system, missing permissions
    or an immutable folder are found before any job runs; a full disk is found by the job (the
    step's error names the file).
    """
    for name in dirs:
        folder = Path(base) / name
        while not folder.is_dir() and folder != folder.parent:
            folder = folder.parent
        try:
            with tempfile.TemporaryFile(dir=folder, prefix=".cinderseg-write-check"):
                pass
        except OSError as err:
            raise ConfigError(
                f"{name}/: cannot write in {folder} ({err.strerror}); run in a writable directory, "
                "or fix the permissions"
            ) from err
