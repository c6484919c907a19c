# The tiles step: training/validation/test tiles of labelled regions.


rule tiles:
    """Cut overlapping tiles with a spatially blocked train/validation split (no leakage)."""
    input:
        features=paths.FEATURES,
        mask=paths.MASK,
    output:
        tiles=paths.TILES,
        manifest=paths.MANIFEST,
    log:
        paths.log("tiles", "{region}"),
    benchmark:
        paths.benchmark("tiles", "{region}")
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
    params:
        tiling=config["tiling"],
        role=region_role,
    script:
        "../scripts/tiles.py"


rule overview:
    """Plot the region's hillshade with labelled cones and tiles coloured by split."""
    input:
        dem=paths.DEM,
        mask=paths.MASK,
        manifest=paths.MANIFEST,
    output:
        png=report(
            paths.OVERVIEW,
            caption="../report/overview.rst",
            category="Regions",
        ),
    log:
        paths.log("overview", "{region}"),
    benchmark:
        paths.benchmark("overview", "{region}")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(10),
    script:
        "../scripts/overview.py"
