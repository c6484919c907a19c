# Download of USGS 3DEP tiles: one job per tile, into a cache shared by all regions.


rule download_tile:
    """Download one 1 x 1 degree USGS 3DEP GeoTIFF tile (e.g. USGS_13_n20w156.tif) into the tile cache."""
    output:
        tile=paths.DEM_TILE,
    log:
        paths.log("download", "USGS_{product}_{tile}"),
    benchmark:
        paths.benchmark("download", "USGS_{product}_{tile}")
    wildcard_constraints:
        product="13|1",
        tile="[ns][0-9]{2}[ew][0-9]{3}",
    # The downloader retries itself (download.retries); one more try resumes a partial file.
    retries: 1
    # On the machine running Snakemake: cluster compute nodes often have no internet access.
    localrule: True
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(500),
        runtime=per_attempt(120),
    script:
        "../scripts/download_tile.py"
