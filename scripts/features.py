"""Snakemake script of rule features: the channel stack computed from the DEM."""

from cinderseg.features import FeatureSettings, compute_features
from cinderseg.step import run_step


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
