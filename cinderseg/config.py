"""Configuration: JSON-schema validation with defaults, and the checks a schema cannot express.

Every error is a :class:`~cinderseg.errors.ConfigError` whose message is one line naming the
config file and the key, for example
``config.yaml: tiling.size: 200 is not a multiple of 32``.
"""

from __future__ import annotations

import copy
import itertools
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cinderseg.download import tiles_for_bbox
from cinderseg.errors import ConfigError
from cinderseg.folds import folds_from_config
from cinderseg.settings import ROLES_WITH_LABELS

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"
REGION_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
#: File name of the model card beside a trained ``.keras`` model (the one place it is defined).
MODEL_CARD = "model_card.json"
#: Keyword values of ``model.encoder_weights``; anything else is a path to a weights file.
WEIGHT_KEYWORDS: tuple[str, ...] = ("pretrained", "imagenet", "none")
#: The U-Net shipped with cinderseg, trained on synthetic terrain only (config/synthetic_pretrain.yaml,
#: rebuilt by ``make pretrained``), with its model card beside it.
PRETRAINED_MODEL = Path(__file__).resolve().parent / "pretrained" / "model.keras"
#: The keyword naming :data:`PRETRAINED_MODEL` in ``predict.model``, ``train.initial_model`` and the
#: ``--model`` option of ``python -m cinderseg predict``.
PRETRAINED_KEYWORD = "pretrained"


def model_path(value: str | Path, *, key: str = "model") -> Path:
    """The model file a config value or ``--model`` names: ``pretrained`` is the shipped model.

    Raises ConfigError (naming ``key``) when the shipped model is asked for but missing.
    """
    if str(value).strip().lower() != PRETRAINED_KEYWORD:
        return Path(value)
    if not PRETRAINED_MODEL.is_file() or not PRETRAINED_MODEL.with_name(MODEL_CARD).is_file():
        raise ConfigError(
            f"{key}: the shipped pretrained model is missing ({PRETRAINED_MODEL} and its "
            f"{MODEL_CARD}); rebuild it with `make pretrained`"
        )
    return PRETRAINED_MODEL


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file with the safe loader; a missing or malformed file is a ConfigError."""
    p = Path(path)
    try:
        with p.open(encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError as err:
        raise ConfigError(f"{p}: file not found") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}") from err


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The config JSON schema as a dict."""
    schema = load_yaml(path)
    if not isinstance(schema, dict):
        raise ConfigError(f"{path}: schema is not a mapping")
    return schema


def _with_defaults(validator_class: type[jsonschema.protocols.Validator]) -> Any:
    """Extend a validator class so that validation fills in ``default`` values (objects only)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(jsonschema.Draft7Validator)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """One human line for a schema violation, naming the key."""
    key = _key_path(error)
    v = error.validator
    if v == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = f"{key}: " if error.absolute_path else ""
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"{where}unknown key {', '.join(map(repr, extra))} (allowed: {allowed})"
    if "propertyNames" in error.schema_path:
        return (
            f"{key}: region name {error.instance!r} may contain only letters, digits, '-' and '_' "
            "(it becomes part of file paths)"
        )
    if v == "pattern" and key.endswith("_url"):
        return f"{key}: {error.instance!r} is not an http(s) URL (downloads are over http or https only)"
    if v == "pattern" and error.validator_value == REGION_NAME.pattern:
        return (
            f"{key}: {error.instance!r} may contain only letters, digits, '-' and '_' "
            "(it becomes part of file paths)"
        )
    if v == "required":
        return f"{key}: {error.message}"
    if v == "type":
        return f"{key}: {error.instance!r} is not of type {error.validator_value}"
    if v == "enum":
        options = ", ".join(map(str, error.validator_value))
        return f"{key}: {error.instance!r} is not one of: {options}"
    if v == "multipleOf":
        return f"{key}: {error.instance!r} is not a multiple of {error.validator_value}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return f"{key}: {error.instance!r} must be {op} {error.validator_value}"
    if v == "anyOf":
        return f"{key}: {error.instance!r} must be a path or a list of paths"
    return f"{key}: {error.message}"


def _best_error(errors: list[jsonschema.ValidationError]) -> jsonschema.ValidationError:
    return min(errors, key=lambda e: (-len(e.absolute_path), str(e.absolute_path)))


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
            if isinstance(region, dict) and region.get("source") == "synthetic":
                region.setdefault("synthetic", {})
            if isinstance(region, dict) and "product" in region:
                explicit_product.add(name)
                if type(region["product"]) is int and region["product"] == 1:  # YAML `product: 1`
                    region["product"] = "1"
    errors = list(_DefaultingValidator(schema).iter_errors(cfg))
    if errors:
        raise ConfigError(f"{source}: {_describe(_best_error(errors))}")
    for name, region in cfg["regions"].items():
        # `product` is a usgs3dep setting: its default stays off other regions (and out of their params).
        if region["source"] != "usgs3dep" and name not in explicit_product:
            region.pop("product", None)
    try:
        check_consistency(cfg)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    return cfg


def check_consistency(cfg: Mapping[str, Any]) -> None:
    """Checks across keys that JSON schema cannot express; raises ConfigError naming the key."""
    tiling = cfg["tiling"]
    if tiling["step"] > tiling["size"]:
        raise ConfigError(
            f"tiling.step: {tiling['step']} is larger than tiling.size ({tiling['size']}); "
            "tiles would leave gaps"
        )
    if tiling["split_block_px"] < tiling["size"]:
        raise ConfigError(
            f"tiling.split_block_px: {tiling['split_block_px']} is smaller than "
            f"tiling.size ({tiling['size']})"
        )
    predict = cfg.get("predict", {})
    window, overlap, crop = (predict.get(k) for k in ("window_px", "overlap_px", "crop_px"))
    if window is not None and overlap is not None and overlap >= window:
        raise ConfigError(f"predict.overlap_px: {overlap} is not smaller than predict.window_px ({window})")
    if overlap is not None and crop is not None and (2 * crop >= overlap if overlap else crop):
        raise ConfigError(f"predict.crop_px: {crop} is not less than half of predict.overlap_px ({overlap})")
    for key in ("relief_exaggeration", "resolution_scale"):
        bounds = cfg.get("train", {}).get(key)
        if bounds is not None and bounds[0] > bounds[1]:
            raise ConfigError(f"train.{key}: {bounds} must be [lo, hi] with lo <= hi")
    classes = cfg.get("evaluate", {}).get("diameter_classes_m", [])
    if any(b <= a for a, b in itertools.pairwise(classes)):
        raise ConfigError(f"evaluate.diameter_classes_m: {classes} must be increasing")
    for name, region in cfg["regions"].items():
        key = f"regions.{name}"
        if region["source"] == "file" and "dem" not in region:
            raise ConfigError(f"{key}.dem: required for source 'file' (a DEM path or a list of paths)")
        if region["source"] == "synthetic" and "dem" in region:
            raise ConfigError(f"{key}.dem: not used with source 'synthetic'; remove it or use source 'file'")
        if region["source"] != "synthetic" and "synthetic" in region:
            raise ConfigError(f"{key}.synthetic: only allowed with source 'synthetic'")
        if region["source"] == "synthetic":
            for field in ("crs", "bbox", "nodata"):
                if field in region:
                    raise ConfigError(
                        f"{key}.{field}: not used with source 'synthetic' (set synthetic.crs / size instead)"
                    )
        if region["source"] != "usgs3dep" and "product" in region:
            raise ConfigError(f"{key}.product: only used with source 'usgs3dep'")
        if region["source"] == "usgs3dep" and "dem" in region:
            raise ConfigError(
                f"{key}.dem: not used with source 'usgs3dep' (the tiles covering bbox are downloaded); "
                "remove it, or use source 'file' for your own files"
            )
        if region["source"] == "usgs3dep" and "bbox" not in region:
            raise ConfigError(
                f"{key}.bbox: required for source 'usgs3dep' ([west, south, east, north] in degrees; "
                "it chooses the tiles to download)"
            )
        if region["role"] in ROLES_WITH_LABELS and "labels" not in region:
            raise ConfigError(
                f"{key}.labels: required for role '{region['role']}' (a vector file or 'synthetic')"
            )
        if region.get("labels") == "synthetic" and region["source"] != "synthetic":
            raise ConfigError(f"{key}.labels: 'synthetic' labels need source 'synthetic'")
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
        syn = region.get("synthetic", {})
        if syn.get("diameter_min_m", 0) > syn.get("diameter_max_m", float("inf")):
            raise ConfigError(
                f"{key}.synthetic.diameter_min_m: {syn['diameter_min_m']} is larger than "
                f"diameter_max_m ({syn['diameter_max_m']})"
            )
    folds_from_config(cfg)  # the crossval section: regions exist and are labelled, enough folds


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
