"""Snakemake script of rules train and crossval_train: the U-Net on the tiles of all training regions
(resumable), then its ONNX copy beside it for prediction without TensorFlow."""

from cinderseg.core.step import run_step
from cinderseg.nn.onnx import export_onnx
from cinderseg.nn.settings import TrainingRun
from cinderseg.nn.train import TrainOutputs, train_model


def train_and_export(onnx, *args, **kwargs):
    """train_model, then the trained model exported to ``onnx``."""
    result = train_model(*args, **kwargs)
    export_onnx(snakemake.output.model, onnx)
    return result


run_step(
    snakemake.log[0],
    train_and_export,
    snakemake.output.onnx,
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
