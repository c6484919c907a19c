"""Snakemake script of rules tile_features, tile_predict, tile_vectorize and tile_baseline: one step of
one map tile (cinderseg.workflow.maptiles; empty outputs for a tile without data)."""

from cinderseg.cones.baseline import BaselineSettings
from cinderseg.cones.vectorize import VectorizeSettings
from cinderseg.core.step import run_step
from cinderseg.terrain.features import FeatureSettings
from cinderseg.workflow import maptiles

inp, out, params, label = snakemake.input, snakemake.output, snakemake.params, snakemake.params.label
if snakemake.rule == "tile_features":
    settings = FeatureSettings.from_config(params.features)
    run_step(snakemake.log[0], maptiles.tile_features, inp.dem, out.features, settings, label=label)
elif snakemake.rule == "tile_predict":
    from cinderseg.terrain.maptiles import has_data, write_empty_raster

    def predict_tile(features: str, model: str, probability: str, settings: dict) -> None:
        """The predict step of one tile; a nodata map for a tile without data (TensorFlow not loaded)."""
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

    run_step(snakemake.log[0], predict_tile, inp.features, inp.model, out.probability, params.predict)
elif snakemake.rule == "tile_vectorize":
    settings = VectorizeSettings.from_config(params.vectorize)
    run_step(
        snakemake.log[0], maptiles.tile_vectorize, inp.probability, inp.dem, out.cones, settings, label=label
    )
else:
    run_step(
        snakemake.log[0],
        maptiles.tile_baseline,
        inp.dem,
        out.cones,
        BaselineSettings.from_config(params.baseline),
        label=label,
        ring_width_px=params.ring_width_px,
    )
