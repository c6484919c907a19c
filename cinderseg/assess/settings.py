"""The evaluate step's settings: the config's ``evaluate`` section (meaning of each key: the schema)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cinderseg.core.errors import ConfigError
from cinderseg.core.schema import section_default, validate_section


@dataclass(frozen=True)
class EvaluateSettings:
    """The config's ``evaluate`` section (meaning of each key: the schema).

    Tolerances are multiples of a cone's radius, diameters in metres, ``block_px`` in pixels.
    ``diameter_classes_m`` is kept as a tuple of floats.
    """

    center_tolerance: float = section_default("evaluate", "center_tolerance")
    radius_tolerance: float = section_default("evaluate", "radius_tolerance")
    iou_threshold: float = section_default("evaluate", "iou_threshold")
    diameter_classes_m: tuple[float, ...] = section_default("evaluate", "diameter_classes_m")
    min_diameter_m: float = section_default("evaluate", "min_diameter_m")
    block_px: int = section_default("evaluate", "block_px")

    def __post_init__(self) -> None:
        values = validate_section("evaluate", asdict(self))
        classes = values["diameter_classes_m"]
        if any(b <= a for a, b in itertools.pairwise(classes)):
            raise ConfigError(
                f"evaluate.diameter_classes_m: expected increasing finite bounds, got {classes!r}"
            )
        object.__setattr__(self, "diameter_classes_m", tuple(float(v) for v in classes))

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> EvaluateSettings:
        """Settings from the config's ``evaluate`` section (missing keys take the schema's defaults)."""
        return cls(**validate_section("evaluate", section))
