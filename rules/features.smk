# The features step: the network's input channels computed from the DEM.


rule features:
    """Compute the configured channel stack (e.g. elevation, Sobel, CLAHE) block by block."""
    input:
        dem=paths.DEM,
    output:
        features=paths.FEATURES,
    log:
        paths.log("features", "{region}"),
    benchmark:
        paths.benchmark("features", "{region}")
    wildcard_constraints:
        region=alternation(UNTILED),
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
