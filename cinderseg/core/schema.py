"""The configuration schema: the one source of every config key's type, range, default and meaning.

``config.schema.yaml`` beside this module is read by the workflow (whole-config validation in
:mod:`cinderseg.workflow.config`), by each step's settings class (defaults and checks of its own
section, :func:`section_default` and :func:`validate_section`) and by the generator of the
configuration reference (``docs/configuration.md``). Errors are one line naming the key.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cinderseg.core.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().with_name("config.schema.yaml")
REGION_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


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


@functools.cache
def _schema_at(path: Path) -> dict[str, Any]:
    schema = load_yaml(path)
    if not isinstance(schema, dict):
        raise ConfigError(f"{path}: schema is not a mapping")
    return schema


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The config JSON schema as a dict (a fresh copy; the file is read once)."""
    return copy.deepcopy(_schema_at(Path(path)))


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


def _is_number(checker: Any, instance: Any) -> bool:
    """JSON numbers are finite and not booleans (NaN and infinity are no settings)."""
    return isinstance(instance, (int, float)) and not isinstance(instance, bool) and math.isfinite(instance)


def _is_integer(checker: Any, instance: Any) -> bool:
    """Integers are ints, not booleans and not floats with a zero fraction (1024.0 is a typo)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_STRICT_TYPES = jsonschema.Draft7Validator.TYPE_CHECKER.redefine_many(
    {"number": _is_number, "integer": _is_integer}
)
_DefaultingValidator = _with_defaults(
    jsonschema.validators.extend(jsonschema.Draft7Validator, type_checker=_STRICT_TYPES)
)


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
    if v == "type" and isinstance(error.instance, float) and not math.isfinite(error.instance):
        return f"{key}: {error.instance!r} is not a finite number"
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


def schema_error(instance: Any, schema: Mapping[str, Any], prefix: str = "") -> str | None:
    """Validate ``instance`` in place (filling defaults); one line for the first violation, else None.

    ``prefix`` (e.g. ``"features"``) is put before the key path of the message.
    """
    errors = list(_DefaultingValidator(dict(schema)).iter_errors(instance))
    if not errors:
        return None
    message = _describe(_best_error(errors))
    if prefix:
        message = (
            f"{prefix}.{message}"
            if not message.startswith("(top level)")
            else message.replace("(top level)", prefix, 1)
        )
        message = message.replace(f"{prefix}.unknown key", f"{prefix}: unknown key")
    return message


def section_schema(section: str) -> dict[str, Any]:
    """The schema of one config section: a top-level key (``"features"``), or ``"region"`` and
    ``"region.synthetic"`` for a region's block and its synthetic parameters."""
    schema = _schema_at(SCHEMA_PATH)
    if section == "region" or section.startswith("region."):
        node = schema["definitions"]["region"]
        for part in section.split(".")[1:]:
            node = node["properties"][part]
        return copy.deepcopy(node)
    try:
        return copy.deepcopy(schema["properties"][section])
    except KeyError:
        raise ConfigError(f"no config section {section!r} in {SCHEMA_PATH.name}") from None


def section_default(section: str, key: str) -> Any:
    """The schema's default of ``section.key`` (a deep copy; lists become tuples for frozen settings)."""
    try:
        value = copy.deepcopy(section_schema(section)["properties"][key]["default"])
    except KeyError:
        raise ConfigError(f"{section}.{key}: no default in {SCHEMA_PATH.name}") from None
    return tuple(value) if isinstance(value, list) else value


def validate_section(section: str, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of one config section checked against its schema, with defaults filled in.

    Tuples are taken as lists. Raises ConfigError naming ``section.key`` (e.g.
    ``features.clahe_kernel_px: 4 must be >= 8``).
    """
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"{section}: expected a mapping of settings, got {type(values).__name__}")
    instance = _plain(dict(values or {}))
    message = schema_error(instance, section_schema(section), prefix=section)
    if message:
        raise ConfigError(message)
    return instance


def _plain(value: Any) -> Any:
    """Tuples as lists, numpy scalars as Python numbers, recursively (what JSON schema checks)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return value.item()
    return value
