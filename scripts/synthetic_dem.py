"""Snakemake script of rule synthetic_dem: generate a synthetic region's DEM and true cones."""

from cinderseg.core.errors import ConfigError
from cinderseg.core.step import run_step
from cinderseg.terrain.synthetic import SyntheticParams, write_synthetic_region


def main(name: str, region: dict, dem_path: str, cones_path: str) -> None:
    try:
        params = SyntheticParams.from_config(region["synthetic"], resolution_m=region["resolution_m"])
        write_synthetic_region(params, dem_path, cones_path)
    except ConfigError as err:
        raise ConfigError(f"region '{name}': {err}") from err


run_step(
    snakemake.log[0],
    main,
    snakemake.wildcards.region,
    snakemake.params.region,
    snakemake.output.dem,
    snakemake.output.cones,
)
