# From model to map: whole-region prediction, cone polygons with morphometry, the classical baseline.


rule predict:
    """Apply the U-Net to the region's features in overlapping windows blended into one probability map."""
    input:
        unpack(prediction_model),
        features="results/features/{region}.tif",
    output:
        probability="results/predictions/{region}.tif",
    log:
        "results/logs/predict/{region}.log",
    benchmark:
        "results/benchmarks/predict/{region}.tsv"
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
        probability="results/predictions/{region}.tif",
        dem="results/dem/{region}.tif",
    output:
        cones="results/cones/{region}.gpkg",
        summary="results/cones/{region}_summary.csv",
        size_frequency=report(
            "results/figures/{region}/size_frequency.png",
            caption="../report/size_frequency.rst",
            category="Cones",
            subcategory="{region}",
        ),
        height_vs_diameter=report(
            "results/figures/{region}/height_vs_diameter.png",
            caption="../report/height_vs_diameter.rst",
            category="Cones",
            subcategory="{region}",
        ),
        cone_map=report(
            "results/figures/{region}/cone_map.png",
            caption="../report/cone_map.rst",
            category="Cones",
            subcategory="{region}",
        ),
    log:
        "results/logs/vectorize/{region}.log",
    benchmark:
        "results/benchmarks/vectorize/{region}.tsv"
    conda:
        "../envs/gis.yaml"
    threads: 1
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
        dem="results/dem/{region}.tif",
    output:
        cones="results/baseline/{region}.gpkg",
    log:
        "results/logs/baseline/{region}.log",
    benchmark:
        "results/benchmarks/baseline/{region}.tsv"
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
