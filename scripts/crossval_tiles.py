"""Snakemake script of rule crossval_tiles: a spatial fold's training tiles, clear of its held-out block."""

import logging

from cinderseg.core.step import run_step
from cinderseg.data.folds import Fold, cut_fold_tiles
from cinderseg.data.tiles import TilingSettings


def main(features: str, mask: str, tiles: str, manifest: str, tiling: dict, fold: dict) -> None:
    spec = Fold.from_params(fold)
    summary = cut_fold_tiles(features, mask, tiles, manifest, TilingSettings.from_config(tiling), spec)
    logging.getLogger("cinderseg").info("tiles of fold %s: %s", spec.name, summary)


run_step(
    snakemake.log[0],
    main,
    snakemake.input.features,
    snakemake.input.mask,
    snakemake.output.tiles,
    snakemake.output.manifest,
    snakemake.params.tiling,
    snakemake.params.fold,
)
