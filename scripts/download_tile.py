"""Snakemake script of rule download_tile: fetch one USGS 3DEP tile into the tile cache.

The download settings are read from the config, not passed as params, so that changing a mirror URL
or a timeout does not download the cached tiles again.
"""

from cinderseg.core.step import run_step
from cinderseg.terrain.download import DownloadSettings, download_tile
from cinderseg.workflow.config import validate_config


def main(tile: str, product: str, dest: str, config: dict) -> None:
    settings = DownloadSettings.from_config(validate_config(config)["download"])
    download_tile(tile, product, dest, settings)


run_step(
    snakemake.log[0],
    main,
    snakemake.wildcards.tile,
    snakemake.wildcards.product,
    snakemake.output.tile,
    snakemake.config,
)
