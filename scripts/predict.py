"""Snakemake script of rules predict and crossval_predict: the U-Net over a whole region, blended."""

from cinderseg.core.step import run_step
from cinderseg.nn.predict import predict_probability
from cinderseg.nn.settings import PredictSettings

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
