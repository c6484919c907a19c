# From model to map: whole-region prediction, cone polygons with morphometry, the classical baseline.


rule predict:
    """Apply the U-Net to the region's features in overlapping windows blended into one probability map."""
    input:
        unpack(prediction_model),
        features=paths.FEATURES,
    output:
        probability=paths.PROBABILITY,
    log:
        paths.log("predict", "{region}"),
    benchmark:
        paths.benchmark("predict", "{region}")
    wildcard_constraints:
        region=alternation(UNTILED),
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
    script:
        "../scripts/predict.py"


rule vectorize:
    """Threshold and clean the probability map, split touching cones, polygonize, measure each cone."""
    input:
        probability=paths.PROBABILITY,
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
        paths.log("vectorize", "{region}"),
    benchmark:
        paths.benchmark("vectorize", "{region}")
    wildcard_constraints:
        region=alternation(UNTILED),
    conda:
        "../envs/gis.yaml"
    threads: VECTORIZE_THREADS
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(60),
    params:
        vectorize=config["vectorize"],
    script:
        "../scripts/vectorize.py"


rule baseline:
    """Detect cones with the classical Laplacian-of-Gaussian detector (no training), measured like the network's."""
    input:
        dem=paths.DEM,
    output:
        cones=paths.BASELINE,
    log:
        paths.log("baseline", "{region}"),
    benchmark:
        paths.benchmark("baseline", "{region}")
    wildcard_constraints:
        region=alternation(UNTILED),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(3000),
        runtime=per_attempt(60),
    params:
        baseline=config["baseline"],
        ring_width_px=config["vectorize"]["ring_width_px"],
    script:
        "../scripts/baseline.py"
