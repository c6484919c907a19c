"""Synthetic volcanic regions: a basaltic shield flank with a cinder-cone field, built offline.

The terrain imitates the upper flanks of Mauna Kea (Hawaii) at DEM scale: a shield flank with fractal
roughness and distractors that are *not* labelled (lava-flow lobes, gullies, pit craters, knobs; see
:mod:`cinderseg.terrain.landforms`), and a field of cinder cones calibrated to the morphometry of Mauna
Kea cones (:mod:`cinderseg.terrain.synthetic_cones`). This module holds the parameters (a region's
``synthetic`` section), the generation, and the writing of the DEM and of the true cones.

Everything is drawn from ``numpy.random.Generator`` streams spawned from the seed, one per component, so the
same parameters give a bit-identical DEM and cone table, and switching one distractor family off leaves the
rest of the terrain unchanged. Arrays are float32; the peak memory is a few full-size float32 arrays (a
4096 x 4096 region needs well under 1 GB).

Coordinates: the DEM is north-up with square pixels of ``resolution_m`` metres, upper-left corner at
(``origin_x``, ``origin_y``) in the projected CRS ``crs`` (metres). Internally positions are kept as local
(east, north) metres from the upper-left corner: pixel (row, col) has its centre at
east = (col + 0.5) * res, north = -(row + 0.5) * res.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import affine
import geopandas as gpd
import numpy as np
import rasterio
from rasterio.crs import CRS
from shapely.geometry import Point

from cinderseg.core.errors import ConfigError
from cinderseg.core.grid import check_metric_crs
from cinderseg.core.raster import NODATA_FLOAT, atomic_write, geotiff_profile
from cinderseg.core.schema import schema_error, section_default, section_schema
from cinderseg.terrain import landforms
from cinderseg.terrain.synthetic_cones import Cone, bury_base, cone_obstacles, cone_relief, place_cones

__all__ = [
    "CONE_COLUMNS",
    "SyntheticParams",
    "SyntheticRegion",
    "generate_synthetic_region",
    "write_synthetic_region",
]

#: Attribute columns of the cone table, in order (the geometry column comes last).
CONE_COLUMNS: tuple[str, ...] = (
    "cone_id",
    "x",
    "y",
    "radius_m",
    "basal_diameter_m",
    "height_m",
    "crater",
    "crater_diameter_m",
    "breached",
    "coalesced",
)


def _synthetic_default(key: str) -> Any:
    return section_default("region.synthetic", key)


@dataclass(frozen=True)
class SyntheticParams:
    """A region's ``synthetic`` section (meaning of each key: the schema), plus the region's
    ``resolution_m`` (its pixel size in metres). ``crs`` must be a projected CRS in metres."""

    seed: int = _synthetic_default("seed")
    width_px: int = _synthetic_default("width_px")
    height_px: int = _synthetic_default("height_px")
    crs: str = _synthetic_default("crs")
    origin_x: float = _synthetic_default("origin_x")
    origin_y: float = _synthetic_default("origin_y")
    n_cones: int = _synthetic_default("n_cones")
    diameter_median_m: float = _synthetic_default("diameter_median_m")
    diameter_sigma: float = _synthetic_default("diameter_sigma")
    diameter_min_m: float = _synthetic_default("diameter_min_m")
    diameter_max_m: float = _synthetic_default("diameter_max_m")
    height_ratio: float = _synthetic_default("height_ratio")
    crater_fraction: float = _synthetic_default("crater_fraction")
    breached_fraction: float = _synthetic_default("breached_fraction")
    coalesced_fraction: float = _synthetic_default("coalesced_fraction")
    shield_height_m: float = _synthetic_default("shield_height_m")
    n_lava_flows: int = _synthetic_default("n_lava_flows")
    n_gullies: int = _synthetic_default("n_gullies")
    n_pit_craters: int = _synthetic_default("n_pit_craters")
    n_knobs: int = _synthetic_default("n_knobs")
    resolution_m: float = section_default("region", "resolution_m")

    def __post_init__(self) -> None:
        values = asdict(self)
        resolution = {"resolution_m": values.pop("resolution_m")}
        of_region = {"properties": {"resolution_m": section_schema("region")["properties"]["resolution_m"]}}
        message = schema_error(values, section_schema("region.synthetic"), prefix="synthetic")
        if message or (message := schema_error(resolution, of_region)):
            raise ConfigError(message)
        if self.diameter_min_m > self.diameter_max_m:
            raise ConfigError(
                f"synthetic.diameter_min_m: {self.diameter_min_m} is larger than "
                f"synthetic.diameter_max_m ({self.diameter_max_m})"
            )
        self.crs_object()

    @classmethod
    def from_config(cls, synthetic: Mapping[str, Any] | None, resolution_m: float) -> SyntheticParams:
        """Parameters from a region's ``synthetic`` section (missing keys take the schema's defaults) and
        its ``resolution_m``; ConfigError naming the key otherwise."""
        if synthetic is not None and not isinstance(synthetic, Mapping):
            raise ConfigError(f"synthetic: expected a mapping of settings, got {type(synthetic).__name__}")
        message = schema_error(dict(synthetic or {}), section_schema("region.synthetic"), prefix="synthetic")
        if message:
            raise ConfigError(message)
        return cls(**dict(synthetic or {}), resolution_m=resolution_m)

    def crs_object(self) -> CRS:
        """The CRS as a rasterio object (ConfigError unless it is projected in metres)."""
        return check_metric_crs(self.crs, "synthetic.crs", error=ConfigError)

    @property
    def transform(self) -> affine.Affine:
        """North-up affine transform of the generated grid (CRS units = metres)."""
        return affine.Affine(
            float(self.resolution_m),
            0.0,
            float(self.origin_x),
            0.0,
            -float(self.resolution_m),
            float(self.origin_y),
        )


@dataclass
class SyntheticRegion:
    """A generated region: DEM (float32 metres, no nodata), its georeferencing, and the true cones.

    ``cones`` has one row per cone with the columns of :data:`CONE_COLUMNS` (centre ``x``/``y`` in CRS
    units, lengths in metres, ``coalesced`` True for every cone that overlaps another one) and a circle
    polygon of the basal outline as geometry.
    """

    dem: np.ndarray
    transform: affine.Affine
    crs: CRS
    cones: gpd.GeoDataFrame


def _cones_frame(cones: list[Cone], p: SyntheticParams, crs: CRS) -> gpd.GeoDataFrame:
    """The cone table in CRS coordinates, with circle polygons of the basal outline."""
    x = np.array([p.origin_x + c.e for c in cones], dtype=np.float64)
    y = np.array([p.origin_y + c.n for c in cones], dtype=np.float64)
    radius = np.array([c.radius for c in cones], dtype=np.float64)
    crater = np.array([c.crater for c in cones], dtype=bool)
    data = {
        "cone_id": np.arange(1, len(cones) + 1, dtype=np.int64),
        "x": x,
        "y": y,
        "radius_m": radius,
        "basal_diameter_m": 2 * radius,
        "height_m": np.array([c.height for c in cones], dtype=np.float64),
        "crater": crater,
        "crater_diameter_m": np.array(
            [2 * c.radius * c.crater_ratio if c.crater else 0.0 for c in cones], dtype=np.float64
        ),
        "breached": np.array([c.breached for c in cones], dtype=bool),
        "coalesced": np.array([c.coalesced for c in cones], dtype=bool),
    }
    geoms = gpd.GeoSeries(
        [Point(a, b).buffer(r, quad_segs=16) for a, b, r in zip(x, y, radius, strict=True)], crs=crs
    )
    return gpd.GeoDataFrame(data, geometry=geoms, crs=crs)


def generate_synthetic_region(params: SyntheticParams) -> SyntheticRegion:
    """Generate a synthetic shield-flank DEM with a cinder-cone field and distractors (deterministic).

    Returns the float32 DEM (metres, no nodata), its north-up transform and CRS, and the true cones.
    """
    p = params
    crs = p.crs_object()
    grid = landforms.Grid(p.height_px, p.width_px, float(p.resolution_m))
    streams = np.random.SeedSequence(int(p.seed) % 2**64).spawn(7)
    rng_shield, rng_rough, rng_flow, rng_gully, rng_cone, rng_pit, rng_knob = (
        np.random.default_rng(s) for s in streams
    )
    dem, summit = landforms.shield(grid, rng_shield, p.shield_height_m)
    centre_az = landforms.downslope(summit, grid.extent_e / 2, -grid.extent_n / 2)
    dem += landforms.roughness(grid, rng_rough, centre_az)
    if p.n_lava_flows:
        dem += landforms.lava_flows(grid, rng_flow, summit, p.n_lava_flows)
    if p.n_gullies:
        dem -= landforms.gullies(grid, rng_gully, summit, p.n_gullies)
    cones = place_cones(p, grid, rng_cone, summit)
    if p.n_pit_craters:
        dem += landforms.pit_craters(grid, rng_pit, cone_obstacles(cones), p.n_pit_craters)
    if p.n_knobs:
        dem += landforms.knobs(grid, rng_knob, cone_obstacles(cones), p.n_knobs)
    if cones:
        relief = np.zeros_like(dem)
        for cone in cones:
            rendered = cone_relief(grid, cone)
            if rendered is None:
                continue
            rs, cs, z, rho = rendered
            bury_base(dem, rs, cs, z, rho, cone)
            np.maximum(relief[rs, cs], z, out=relief[rs, cs])  # coalesced cones: heights combine by maximum
        dem += relief
        del relief
    return SyntheticRegion(
        dem=dem.astype(landforms.F32, copy=False),
        transform=p.transform,
        crs=crs,
        cones=_cones_frame(cones, p, crs),
    )


def write_synthetic_region(params: SyntheticParams, dem_path: Path, cones_path: Path) -> None:
    """Generate a region and write its DEM (float32 GeoTIFF, nodata NODATA_FLOAT) and its cones
    (GeoPackage, layer "cones"; an empty but valid layer when there are none), both atomically."""
    region = generate_synthetic_region(params)
    height, width = region.dem.shape
    profile = geotiff_profile(
        width=width,
        height=height,
        count=1,
        dtype="float32",
        crs=region.crs,
        transform=region.transform,
        nodata=NODATA_FLOAT,
    )
    with atomic_write(dem_path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(region.dem, 1)
    with atomic_write(cones_path) as tmp:
        region.cones.to_file(tmp, layer="cones", driver="GPKG", engine="pyogrio", geometry_type="Polygon")
