"""Snakemake script of rule features: the channel stack computed from the DEM."""

from cinderseg.core.step import run_step
from cinderseg.terrain.features import FeatureSettings, compute_features


def main(dem: str, features: str, settings: dict, region: str) -> None:
    compute_features(dem, features, FeatureSettings.from_config(settings), region=region)


run_step(
    snakemake.log[0],
    main,
    snakemake.input.dem,
    snakemake.output.features,
    snakemake.params.features,
    snakemake.wildcards.region,
)
