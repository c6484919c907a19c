"""Hillshade: Lambertian shading of a surface from its slopes (numpy only, no cinderseg imports)."""

from __future__ import annotations

import math

import numpy as np


def hillshade(dzdx: np.ndarray, dzdy: np.ndarray, azimuth_deg: float, altitude_deg: float) -> np.ndarray:
    """Lambertian hillshade (0..1) from slopes dz/dx (east) and dz/dy (north) in m/m; sun in degrees."""
    az, alt = math.radians(azimuth_deg), math.radians(altitude_deg)
    sx, sy, sz = math.sin(az) * math.cos(alt), math.cos(az) * math.cos(alt), math.sin(alt)
    shade = (-dzdx * sx - dzdy * sy + sz) / np.sqrt(1.0 + dzdx * dzdx + dzdy * dzdy)
    return np.clip(shade, 0.0, 1.0)
