"""Shared checks of the typed settings dataclasses built from config sections."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from cinderseg.core.errors import ConfigError

#: Roles of the regions that have labels (the others are only mapped).
ROLES_WITH_LABELS = ("train", "test")


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for booleans (YAML's true is not 1 here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for finite Python and numpy numbers, False for booleans."""
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


def check_number(key: str, value: Any, low: float, high: float | None, *, low_open: bool = False) -> None:
    """ConfigError naming ``key`` unless ``value`` is a finite number >= ``low`` (> with ``low_open``)
    and <= ``high`` (None: no upper bound)."""
    ok = is_number(value) and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and <= {high}")
        raise ConfigError(f"{key}: expected a number {bound}, got {value!r}")


def known_keys_only(section: str, values: Mapping[str, Any] | None, known: Iterable[str]) -> dict[str, Any]:
    """A copy of a config section, or ConfigError naming ``section.key`` for the first unknown key."""
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"{section}: expected a mapping of settings, got {type(values).__name__}")
    names = sorted(known)
    for key in values or {}:
        if key not in names:
            raise ConfigError(f"{section}.{key}: unknown key; known keys are {', '.join(names)}")
    return {str(key): value for key, value in (values or {}).items()}
