# Regions mapped in tiles (regions.<name>.tiles): the dem, features, predict, vectorize and baseline
# steps on each tile (its core plus a margin, on the region's grid), then the region's DEM, probability
# map, cones and baseline cones mosaicked from the tiles' cores (cinderseg.workflow.maptiles). The
# region-level outputs are the paths of a region mapped whole, so mask, evaluate and the report read them
# as they are. Logs and benchmarks: results/logs/{step}/{region}/{maptile}.log.


rule tile_dem:
    """Mosaic and reproject the region's DEM file(s) or 3DEP tiles onto one tile's window of the region's grid."""
    input:
        dem=tile_dem_sources,
    output:
        dem=paths.TILE_DEM,
    log:
        paths.log("dem", "{region}/{maptile}"),
    benchmark:
        paths.benchmark("dem", "{region}/{maptile}")
    wildcard_constraints:
        region=alternation(list(TILED)),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(30),
    params:
        region=region_settings,
        dem=config["dem"],
        grid=tile_grid,
        label=tile_label,
    script:
        "../scripts/dem.py"


rule tile_features:
    """Compute the configured channel stack of one tile."""
    input:
        dem=paths.TILE_DEM,
    output:
        features=paths.TILE_FEATURES,
    log:
        paths.log("features", "{region}/{maptile}"),
    benchmark:
        paths.benchmark("features", "{region}/{maptile}")
    wildcard_constraints:
        region=alternation(list(TILED)),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(30),
    params:
        features=config["features"],
        label=tile_label,
    script:
        "../scripts/tile_step.py"


rule tile_predict:
    """Apply the U-Net to one tile's features in overlapping windows blended into its probability map."""
    input:
        unpack(prediction_model),
        features=paths.TILE_FEATURES,
    output:
        probability=paths.TILE_PROBABILITY,
    log:
        paths.log("predict", "{region}/{maptile}"),
    benchmark:
        paths.benchmark("predict", "{region}/{maptile}")
    wildcard_constraints:
        region=alternation(list(TILED)),
    conda:
        "../envs/tf.yaml"
    threads: TRAIN_THREADS
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(120),
    params:
        predict=predict_settings,
        channels=config["features"]["channels"],
        tile_size=expected_tile_size,
        label=tile_label,
    script:
        "../scripts/tile_predict.py"


rule tile_vectorize:
    """Cone polygons with morphometry of one tile (its margin included; the merge keeps its core's)."""
    input:
        probability=paths.TILE_PROBABILITY,
        dem=paths.TILE_DEM,
    output:
        cones=paths.TILE_CONES,
    log:
        paths.log("vectorize", "{region}/{maptile}"),
    benchmark:
        paths.benchmark("vectorize", "{region}/{maptile}")
    wildcard_constraints:
        region=alternation(list(TILED)),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(60),
    params:
        vectorize=config["vectorize"],
        label=tile_label,
    script:
        "../scripts/tile_step.py"


rule tile_baseline:
    """The classical detector on one tile (its margin included; the merge keeps its core's)."""
    input:
        dem=paths.TILE_DEM,
    output:
        cones=paths.TILE_BASELINE,
    log:
        paths.log("baseline", "{region}/{maptile}"),
    benchmark:
        paths.benchmark("baseline", "{region}/{maptile}")
    wildcard_constraints:
        region=alternation(list(TILED)),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(3000),
        runtime=per_attempt(60),
    params:
        baseline=config["baseline"],
        ring_width_px=config["vectorize"]["ring_width_px"],
        label=tile_label,
    script:
        "../scripts/tile_step.py"


rule mosaic_dem:
    """The region's DEM from its tiles' cores (each pixel from the one tile whose core holds it)."""
    input:
        tile_files(paths.TILE_DEM),
    output:
        paths.DEM,
    log:
        paths.log("mosaic_dem", "{region}"),
    benchmark:
        paths.benchmark("mosaic_dem", "{region}")
    wildcard_constraints:
        region=alternation(list(TILED)),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(60),
    params:
        plan=region_plan,
    script:
        "../scripts/mosaic_raster.py"


rule mosaic_probability:
    """The region's probability map from its tiles' cores."""
    input:
        tile_files(paths.TILE_PROBABILITY),
    output:
        paths.PROBABILITY,
    log:
        paths.log("mosaic_probability", "{region}"),
    benchmark:
        paths.benchmark("mosaic_probability", "{region}")
    wildcard_constraints:
        region=alternation(list(TILED)),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(60),
    params:
        plan=region_plan,
    script:
        "../scripts/mosaic_raster.py"


rule mosaic_cones:
    """The region's cone layer from its tiles' (cones on the seams once), its summary and figures."""
    input:
        cones=tile_files(paths.TILE_CONES),
        dem=paths.DEM,
    output:
        cones=paths.CONES,
        summary=paths.CONE_SUMMARY,
        size_frequency=report(
            region_figure("size_frequency"),
            caption="../report/size_frequency.rst",
            category="Cones",
            subcategory="{region}",
        ),
        height_vs_diameter=report(
            region_figure("height_vs_diameter"),
            caption="../report/height_vs_diameter.rst",
            category="Cones",
            subcategory="{region}",
        ),
        cone_map=report(
            region_figure("cone_map"),
            caption="../report/cone_map.rst",
            category="Cones",
            subcategory="{region}",
        ),
    log:
        paths.log("mosaic_cones", "{region}"),
    benchmark:
        paths.benchmark("mosaic_cones", "{region}")
    wildcard_constraints:
        region=alternation(list(TILED)),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(30),
    params:
        plan=region_plan,
    script:
        "../scripts/mosaic_cones.py"


rule mosaic_baseline:
    """The region's baseline cones from its tiles' (cones on the seams once, the stronger kept)."""
    input:
        tile_files(paths.TILE_BASELINE),
    output:
        cones=paths.BASELINE,
    log:
        paths.log("mosaic_baseline", "{region}"),
    benchmark:
        paths.benchmark("mosaic_baseline", "{region}")
    wildcard_constraints:
        region=alternation(list(TILED)),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(30),
    params:
        plan=region_plan,
        max_overlap=config["baseline"]["max_overlap"],
    script:
        "../scripts/mosaic_cones.py"
