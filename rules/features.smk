# The features step: the network's input channels computed from the DEM.


rule features:
    """Compute the configured channel stack (e.g. elevation, Sobel, CLAHE) block by block."""
    input:
        dem="results/dem/{region}.tif",
    output:
        features="results/features/{region}.tif",
    log:
        "results/logs/features/{region}.log",
    benchmark:
        "results/benchmarks/features/{region}.tsv"
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(30),
    params:
        features=config["features"],
    script:
        "../scripts/features.py"
