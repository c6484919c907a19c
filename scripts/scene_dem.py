"""Snakemake script of rule scene_dem: compose a training scene from its donors' labelled cones."""

from cinderseg.core.errors import ConfigError
from cinderseg.core.raster import open_raster
from cinderseg.core.step import run_step
from cinderseg.data.mask import load_labels
from cinderseg.data.scenes import SceneParams, write_scene


def main(name: str, region: dict, inp, out, radius_fields: list[str]) -> None:
    try:
        params = SceneParams.from_config(region["scene"], resolution_m=region["resolution_m"])
    except ConfigError as err:
        raise ConfigError(f"region '{name}': {err}") from err
    donors = []
    for donor, dem, labels, field in zip(params.donors, inp.dems, inp.labels, radius_fields, strict=True):
        with open_raster(dem, what=f"DEM of region '{donor}'") as ds:
            crs = ds.crs
        donors.append((dem, load_labels(labels, target_crs=crs, radius_field=field, region=donor)))
    write_scene(params, out.dem, out.cones, donors)


run_step(
    snakemake.log[0],
    main,
    snakemake.wildcards.region,
    snakemake.params.region,
    snakemake.input,
    snakemake.output,
    list(snakemake.params.radius_fields),
)
