# The mask step: cone labels rasterized onto the region's DEM grid.


rule mask:
    """Rasterize the region's cone labels (polygons, or points with a radius) onto its DEM grid."""
    input:
        dem=paths.DEM,
        labels=labels_file,
    output:
        mask=paths.MASK,
    log:
        paths.log("mask", "{region}"),
    benchmark:
        paths.benchmark("mask", "{region}")
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(1000),
        runtime=per_attempt(10),
    params:
        radius_field=radius_field,
    script:
        "../scripts/mask.py"
