"""Snakemake script of rules tile_features, tile_vectorize and tile_baseline: one GIS step of one map
tile (cinderseg.workflow.maptiles; empty outputs for a tile without data). tile_predict:
scripts/tile_predict.py (its own environment, with TensorFlow)."""

from cinderseg.cones.baseline import BaselineSettings
from cinderseg.cones.vectorize import VectorizeSettings
from cinderseg.core.step import run_step
from cinderseg.terrain.features import FeatureSettings
from cinderseg.workflow import maptiles

inp, out, params, label = snakemake.input, snakemake.output, snakemake.params, snakemake.params.label
if snakemake.rule == "tile_features":
    settings = FeatureSettings.from_config(params.features)
    run_step(snakemake.log[0], maptiles.tile_features, inp.dem, out.features, settings, label=label)
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
