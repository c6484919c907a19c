# The tiles step: training/validation/test tiles of labelled regions.


rule tiles:
    """Cut overlapping tiles with a spatially blocked train/validation split (no leakage)."""
    input:
        features="results/features/{region}.tif",
        mask="results/masks/{region}.tif",
    output:
        tiles="results/tiles/{region}.npz",
        manifest="results/tiles/{region}.csv",
    log:
        "results/logs/tiles/{region}.log",
    benchmark:
        "results/benchmarks/tiles/{region}.tsv"
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
    params:
        tiling=config["tiling"],
        role=lambda wildcards: config["regions"][wildcards.region]["role"],
    script:
        "../scripts/tiles.py"


rule overview:
    """Plot the region's hillshade with labelled cones and tiles coloured by split."""
    input:
        dem="results/dem/{region}.tif",
        mask="results/masks/{region}.tif",
        manifest="results/tiles/{region}.csv",
    output:
        png=report(
            "results/overview/{region}.png",
            caption="../report/overview.rst",
            category="Regions",
        ),
    log:
        "results/logs/overview/{region}.log",
    benchmark:
        "results/benchmarks/overview/{region}.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(10),
    script:
        "../scripts/overview.py"
