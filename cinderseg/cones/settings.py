"""Settings of the vectorize step: the config's ``vectorize`` section."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cinderseg.core.errors import ConfigError
from cinderseg.core.schema import section_default, validate_section


@dataclass(frozen=True)
class VectorizeSettings:
    """The config's ``vectorize`` section (meaning of each key: the schema).

    Lengths in metres, areas in square metres, ``*_px`` in pixels of the probability raster.
    """

    threshold: float = section_default("vectorize", "threshold")
    min_area_m2: float = section_default("vectorize", "min_area_m2")
    max_diameter_m: float = section_default("vectorize", "max_diameter_m")
    fill_holes: bool = section_default("vectorize", "fill_holes")
    opening_px: int = section_default("vectorize", "opening_px")
    split_touching: bool = section_default("vectorize", "split_touching")
    split_min_distance_m: float = section_default("vectorize", "split_min_distance_m")
    split_saddle_ratio: float = section_default("vectorize", "split_saddle_ratio")
    ring_width_px: int = section_default("vectorize", "ring_width_px")
    block_px: int = section_default("vectorize", "block_px")
    min_circularity: float = section_default("vectorize", "min_circularity")
    outline: str = section_default("vectorize", "outline")
    min_height_m: float = section_default("vectorize", "min_height_m")
    min_height_to_diameter: float = section_default("vectorize", "min_height_to_diameter")
    second_stage: str = section_default("vectorize", "second_stage")

    def __post_init__(self) -> None:
        validate_section("vectorize", asdict(self))
        disc_m2 = math.pi / 4 * self.max_diameter_m**2
        if self.min_area_m2 >= disc_m2:
            raise ConfigError(
                f"vectorize.min_area_m2 ({self.min_area_m2:g}) leaves no room below vectorize.max_diameter_m "
                f"({self.max_diameter_m:g} m, a disc of {disc_m2:.0f} m2)"
            )

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> VectorizeSettings:
        """Settings from the config's ``vectorize`` section (missing keys take the schema's defaults)."""
        return cls(**validate_section("vectorize", section))
