# The train step: the U-Net on the tiles of all training regions.


rule train:
    """Train the U-Net on the tiles of all role 'train' regions; resumes after a kill (state in results/models/{model}.state)."""
    input:
        tiles=training_tiles,
        manifests=training_manifests,
        initial_model=initial_model_files,
    output:
        model="results/models/{model}/model.keras",
        history="results/models/{model}/history.csv",
        curves=report(
            "results/models/{model}/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
        card="results/models/{model}/model_card.json",
    log:
        "results/logs/train/{model}.log",
    benchmark:
        "results/benchmarks/train/{model}.tsv"
    wildcard_constraints:
        model=MODEL,
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
        regions=TRAINING,
        features=config["features"],
        resolutions={r: config["regions"][r]["resolution_m"] for r in TRAINING},
    script:
        "../scripts/train.py"
