# The mask step: cone labels rasterized onto the region's DEM grid.


rule mask:
    """Rasterize the region's cone labels (polygons, or points with a radius) onto its DEM grid."""
    input:
        dem="results/dem/{region}.tif",
        labels=labels_file,
    output:
        mask="results/masks/{region}.tif",
    log:
        "results/logs/mask/{region}.log",
    benchmark:
        "results/benchmarks/mask/{region}.tsv"
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(10),
    params:
        radius_field=lambda wildcards: config["regions"][wildcards.region][
            "radius_field"
        ],
    script:
        "../scripts/mask.py"
