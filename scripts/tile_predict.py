"""Snakemake script of rule tile_predict: the predict step of one map tile (cinderseg.workflow.maptiles;
a nodata map for a tile without data, TensorFlow not loaded)."""

from cinderseg.core.step import run_step
from cinderseg.terrain.maptiles import has_data, write_empty_raster

params, label = snakemake.params, snakemake.params.label


def predict_tile(features: str, model: str, probability: str, settings: dict) -> None:
    """The predict step of one tile; a nodata map for a tile without data."""
    if not has_data(features, what=f"features of {label}"):
        write_empty_raster(features, probability, [None])
        return
    from cinderseg.nn.predict import predict_probability
    from cinderseg.nn.settings import PredictSettings

    predict_probability(
        features,
        model,
        probability,
        PredictSettings.from_config(settings),
        expected_channels=params.channels,
        expected_tile_size=params.tile_size,
        region=label,
        threads=snakemake.threads,
    )


inp, out = snakemake.input, snakemake.output
run_step(snakemake.log[0], predict_tile, inp.features, inp.model, out.probability, params.predict)
