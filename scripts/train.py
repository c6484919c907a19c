"""Snakemake script of rules train and crossval_train: the U-Net on the tiles of all training regions
(resumable)."""

from cinderseg.core.step import run_step
from cinderseg.nn.settings import TrainingRun
from cinderseg.nn.train import TrainOutputs, train_model

run_step(
    snakemake.log[0],
    train_model,
    list(snakemake.input.tiles),
    list(snakemake.input.manifests),
    TrainOutputs(
        model=snakemake.output.model,
        history=snakemake.output.history,
        curves=snakemake.output.curves,
        card=snakemake.output.card,
    ),
    TrainingRun.from_config(
        snakemake.params.model,
        snakemake.params.train,
        features=snakemake.params.features,
        regions=list(snakemake.params.regions),
        tile_size=snakemake.params.tile_size,
        resolutions_m=dict(snakemake.params.resolutions),
        threads=snakemake.threads,
        fold=snakemake.params.get("fold"),  # rule crossval_train: the fold this model holds out
    ),
)
