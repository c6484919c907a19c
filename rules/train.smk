# The train step: the U-Net on the tiles of all training regions.


rule train:
    """Train the U-Net on the tiles of all role 'train' regions; resumes after a kill (state in {model}.state beside the model's folder); its ONNX copy beside it."""
    input:
        tiles=training_tiles,
        manifests=training_manifests,
        initial_model=initial_model_files,
    output:
        model=model_file("model.keras"),
        history=model_file("history.csv"),
        curves=report(
            model_file("training_curves.png"),
            caption="../report/training_curves.rst",
            category="Training",
        ),
        card=model_file("model_card.json"),
        onnx=model_file("model.onnx"),
    log:
        paths.log("train", "{model}"),
    benchmark:
        paths.benchmark("train", "{model}")
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
