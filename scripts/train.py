"""Snakemake script of rule train: the U-Net on the tiles of all training regions (resumable)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ info lines

from cinderseg.step import run_step
from cinderseg.train import train_model

run_step(
    snakemake.log[0],
    train_model,
    list(snakemake.input.tiles),
    list(snakemake.input.manifests),
    model_path=snakemake.output.model,
    history_path=snakemake.output.history,
    curves_path=snakemake.output.curves,
    card_path=snakemake.output.card,
    model_config=snakemake.params.model,
    train_config=snakemake.params.train,
    regions=snakemake.params.regions,
    tile_size=snakemake.params.tile_size,
    features_config=snakemake.params.features,
    resolutions_m=snakemake.params.resolutions,
    threads=snakemake.threads,
    fold=snakemake.params.get("fold"),  # rule crossval_train: the fold this model holds out
)
