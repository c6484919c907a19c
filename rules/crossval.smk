# Cross-region evaluation (the crossval section): per fold, tiles without the held-out area, a model,
# its map of the held-out region, and the network and the baseline scored on the held-out area only.


rule crossval_tiles:
    """Cut a spatial fold's training/validation tiles from its region, none within gap_m of the held-out block."""
    input:
        features=held_out_file("results/features/{region}.tif"),
        mask=held_out_file("results/masks/{region}.tif"),
    output:
        tiles="results/crossval/tiles/{fold}.npz",
        manifest="results/crossval/tiles/{fold}.csv",
    log:
        "results/logs/crossval_tiles/{fold}.log",
    benchmark:
        "results/benchmarks/crossval_tiles/{fold}.tsv"
    wildcard_constraints:
        fold=alternation(SPATIAL_FOLDS),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
    params:
        tiling=config["tiling"],
        fold=fold_settings,
    script:
        "../scripts/crossval_tiles.py"


rule crossval_region_tiles:
    """Cut a region's tiles as for a role 'train' region (train/validation split), for leave-one-region-out training."""
    input:
        features="results/features/{region}.tif",
        mask="results/masks/{region}.tif",
    output:
        tiles="results/crossval/tiles/as_train/{region}.npz",
        manifest="results/crossval/tiles/as_train/{region}.csv",
    log:
        "results/logs/crossval_region_tiles/{region}.log",
    benchmark:
        "results/benchmarks/crossval_region_tiles/{region}.tsv"
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
    params:
        tiling=config["tiling"],
        role="train",
    script:
        "../scripts/tiles.py"


rule crossval_train:
    """Train a fold's U-Net (settings of rule train) on its training tiles; resumes after a kill."""
    input:
        tiles=fold_training_tiles,
        manifests=fold_training_manifests,
        initial_model=initial_model_files,
    output:
        model="results/crossval/models/{fold}/model.keras",
        history="results/crossval/models/{fold}/history.csv",
        curves="results/crossval/models/{fold}/training_curves.png",
        card="results/crossval/models/{fold}/model_card.json",
    log:
        "results/logs/crossval_train/{fold}.log",
    benchmark:
        "results/benchmarks/crossval_train/{fold}.tsv"
    conda:
        "../envs/tf.yaml"
    threads: TRAIN_THREADS
    resources:
        mem_mb=per_attempt(8000),
        runtime=train_runtime,
    params:
        model=config["model"],
        train=config["train"],
        tile_size=config["tiling"]["size"],
        regions=fold_training_regions,
        features=config["features"],
        resolutions=fold_resolutions,
        fold=fold_settings,
    script:
        "../scripts/train.py"


rule crossval_predict:
    """Apply a fold's U-Net to the whole held-out region (scored on the held-out area only)."""
    input:
        model="results/crossval/models/{fold}/model.keras",
        card="results/crossval/models/{fold}/model_card.json",
        features=held_out_file("results/features/{region}.tif"),
    output:
        probability="results/crossval/predictions/{fold}.tif",
    log:
        "results/logs/crossval_predict/{fold}.log",
    benchmark:
        "results/benchmarks/crossval_predict/{fold}.tsv"
    conda:
        "../envs/tf.yaml"
    threads: TRAIN_THREADS
    resources:
        mem_mb=per_attempt(4000),
        runtime=per_attempt(120),
    params:
        predict=predict_settings,
        channels=config["features"]["channels"],
        tile_size=config["tiling"]["size"],
        region=fold_held_out_region,
    script:
        "../scripts/predict.py"


rule crossval_vectorize:
    """Cone polygons with morphometry from a fold's probability map of its held-out region."""
    input:
        probability="results/crossval/predictions/{fold}.tif",
        dem=held_out_file("results/dem/{region}.tif"),
    output:
        cones="results/crossval/cones/{fold}.gpkg",
        summary="results/crossval/cones/{fold}_summary.csv",
        size_frequency="results/crossval/figures/{fold}/size_frequency.png",
        height_vs_diameter="results/crossval/figures/{fold}/height_vs_diameter.png",
        cone_map="results/crossval/figures/{fold}/cone_map.png",
    log:
        "results/logs/crossval_vectorize/{fold}.log",
    benchmark:
        "results/benchmarks/crossval_vectorize/{fold}.tsv"
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(60),
    params:
        vectorize=config["vectorize"],
        region=fold_held_out_region,
    script:
        "../scripts/vectorize.py"


rule crossval_evaluate:
    """Score a fold's network cones and the baseline's on the held-out area only (spatial: cones centred in the block)."""
    input:
        probability="results/crossval/predictions/{fold}.tif",
        cones="results/crossval/cones/{fold}.gpkg",
        baseline=held_out_file("results/baseline/{region}.gpkg"),
        mask=held_out_file("results/masks/{region}.tif"),
        dem=held_out_file("results/dem/{region}.tif"),
        labels=held_out_labels,
    output:
        metrics="results/metrics/crossval/{fold}.json",
        errors="results/crossval/figures/{fold}/errors.png",
    log:
        "results/logs/crossval_evaluate/{fold}.log",
    benchmark:
        "results/benchmarks/crossval_evaluate/{fold}.tsv"
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(30),
    params:
        evaluate=config["evaluate"],
        threshold=config["vectorize"]["threshold"],
        radius_field=held_out_radius_field,
        role="held_out",
        region=fold_held_out_region,
        fold=fold_settings,
    script:
        "../scripts/evaluate.py"


rule crossval_summary:
    """Tabulate every fold's network and baseline scores, and their means per held-out region and overall."""
    input:
        expand("results/metrics/crossval/{fold}.json", fold=FOLDS),
    output:
        folds=report(
            "results/metrics/crossval_folds.csv",
            caption="../report/crossval_folds.rst",
            category="Cross-validation",
        ),
        summary=report(
            "results/metrics/crossval_summary.csv",
            caption="../report/crossval_summary.rst",
            category="Cross-validation",
        ),
    log:
        "results/logs/crossval_summary/all.log",
    benchmark:
        "results/benchmarks/crossval_summary/all.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(500),
        runtime=per_attempt(5),
    script:
        "../scripts/crossval_summary.py"


rule crossval:
    """Build only the cross-validation tables (folds of the crossval section)."""
    input:
        crossval_outputs,
