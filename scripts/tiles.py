"""Snakemake script of rule tiles: training tiles with a spatially blocked split."""

import logging

from cinderseg.core.step import run_step
from cinderseg.data.tiles import TilingSettings, make_tiles


def main(features: str, mask: str, tiles: str, manifest: str, tiling: dict, role: str, region: str) -> None:
    summary = make_tiles(
        features, mask, tiles, manifest, TilingSettings.from_config(tiling), role=role, region=region
    )
    logging.getLogger("cinderseg").info("tiles of region %s: %s", region, summary)


run_step(
    snakemake.log[0],
    main,
    snakemake.input.features,
    snakemake.input.mask,
    snakemake.output.tiles,
    snakemake.output.manifest,
    snakemake.params.tiling,
    snakemake.params.role,
    snakemake.wildcards.region,
)
