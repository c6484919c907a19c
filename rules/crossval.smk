# Cross-region evaluation (the crossval section): per fold, tiles without the held-out area, a model,
# its map of the held-out region, and the network and the baseline scored on the held-out area only.
# The fold's steps are the main rules (tiles, train, predict, vectorize, evaluate) on the fold's
# files: only inputs, outputs, logs, benchmarks and the params that differ are given here.


rule crossval_tiles:
    """Cut a spatial fold's training/validation tiles from its region, none within gap_m of the held-out block."""
    input:
        features=held_out_file(paths.FEATURES),
        mask=held_out_file(paths.MASK),
    output:
        tiles=paths.FOLD_TILES,
        manifest=paths.FOLD_MANIFEST,
    log:
        paths.log("crossval_tiles", "{fold}"),
    benchmark:
        paths.benchmark("crossval_tiles", "{fold}")
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


# A region's tiles cut as for a role 'train' region (train/validation split), for
# leave-one-region-out training.
use rule tiles as crossval_region_tiles with:
    output:
        tiles=paths.AS_TRAIN_TILES,
        manifest=paths.AS_TRAIN_MANIFEST,
    log:
        paths.log("crossval_region_tiles", "{region}"),
    benchmark:
        paths.benchmark("crossval_region_tiles", "{region}")
    params:
        role="train",


# A fold's U-Net (settings of rule train) on its training tiles; resumes after a kill.
use rule train as crossval_train with:
    input:
        tiles=fold_training_tiles,
        manifests=fold_training_manifests,
        initial_model=initial_model_files,
    output:
        model=fold_model_file("model.keras"),
        history=fold_model_file("history.csv"),
        curves=report(
            fold_model_file("training_curves.png"),
            caption="../report/crossval_training_curves.rst",
            category="Cross-validation",
            subcategory="Training curves",
            labels={"fold": "{fold}"},
        ),
        card=fold_model_file("model_card.json"),
        onnx=fold_model_file("model.onnx"),
    log:
        paths.log("crossval_train", "{fold}"),
    benchmark:
        paths.benchmark("crossval_train", "{fold}")
    params:
        regions=fold_training_regions,
        resolutions=fold_resolutions,
        fold=fold_settings,


# A fold's U-Net over the whole held-out region (scored on the held-out area only).
use rule predict as crossval_predict with:
    input:
        model=fold_model_file("model.keras"),
        card=fold_model_file("model_card.json"),
        features=held_out_file(paths.FEATURES),
    output:
        probability=paths.FOLD_PROBABILITY,
    log:
        paths.log("crossval_predict", "{fold}"),
    benchmark:
        paths.benchmark("crossval_predict", "{fold}")
    params:
        tile_size=config["tiling"]["size"],
        region=fold_held_out_region,


# Cone polygons with morphometry from a fold's probability map of its held-out region.
use rule vectorize as crossval_vectorize with:
    input:
        probability=paths.FOLD_PROBABILITY,
        dem=held_out_file(paths.DEM),
    output:
        cones=paths.FOLD_CONES,
        summary=paths.FOLD_CONE_SUMMARY,
        size_frequency=fold_figure("size_frequency"),
        height_vs_diameter=fold_figure("height_vs_diameter"),
        cone_map=fold_figure("cone_map"),
    log:
        paths.log("crossval_vectorize", "{fold}"),
    benchmark:
        paths.benchmark("crossval_vectorize", "{fold}")
    params:
        region=fold_held_out_region,


# A fold's network cones and the baseline's scored on the held-out area only (spatial: cones
# centred in the block).
use rule evaluate as crossval_evaluate with:
    input:
        probability=paths.FOLD_PROBABILITY,
        cones=paths.FOLD_CONES,
        baseline=held_out_file(paths.BASELINE),
        mask=held_out_file(paths.MASK),
        dem=held_out_file(paths.DEM),
        labels=held_out_labels,
    output:
        metrics=paths.FOLD_METRICS,
        errors=fold_figure("errors"),
    log:
        paths.log("crossval_evaluate", "{fold}"),
    benchmark:
        paths.benchmark("crossval_evaluate", "{fold}")
    params:
        radius_field=held_out_radius_field,
        role="held_out",
        region=fold_held_out_region,
        fold=fold_settings,


rule crossval_summary:
    """Tabulate every fold's network and baseline scores, and their means per held-out region and overall."""
    input:
        expand(paths.FOLD_METRICS, fold=FOLDS),
    output:
        folds=report(
            paths.CROSSVAL_FOLDS,
            caption="../report/crossval_folds.rst",
            category="Cross-validation",
        ),
        summary=report(
            paths.CROSSVAL_SUMMARY,
            caption="../report/crossval_summary.rst",
            category="Cross-validation",
        ),
    log:
        paths.log("crossval_summary", "all"),
    benchmark:
        paths.benchmark("crossval_summary", "all")
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
