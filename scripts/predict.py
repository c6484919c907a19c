"""Snakemake script of rules predict and crossval_predict: the U-Net over a whole region, blended."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ info lines

from cinderseg.predict import PredictSettings, predict_probability
from cinderseg.step import run_step

run_step(
    snakemake.log[0],
    predict_probability,
    snakemake.input.features,
    snakemake.input.model,
    snakemake.output.probability,
    PredictSettings.from_config(snakemake.params.predict),
    expected_channels=snakemake.params.channels,
    expected_tile_size=snakemake.params.tile_size,
    region=snakemake.params.get("region") or snakemake.wildcards.region,
    threads=snakemake.threads,
)
