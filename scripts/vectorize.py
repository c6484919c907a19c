"""Snakemake script of rules vectorize and crossval_vectorize: cone polygons, morphometry, figures."""

from cinderseg.cones.vectorize import VectorizeSettings, write_cone_products
from cinderseg.core.step import run_step


def main(inp, out, settings: dict, region: str, workers: int) -> None:
    write_cone_products(
        inp.probability,
        inp.dem,
        VectorizeSettings.from_config(settings),
        cones_path=out.cones,
        summary_path=out.summary,
        size_frequency_path=out.size_frequency,
        height_vs_diameter_path=out.height_vs_diameter,
        cone_map_path=out.cone_map,
        region=region,
        workers=workers,
    )


run_step(
    snakemake.log[0],
    main,
    snakemake.input,
    snakemake.output,
    snakemake.params.vectorize,
    snakemake.params.get("region") or snakemake.wildcards.region,
    snakemake.threads,
)
