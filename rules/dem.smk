# The dem step: one metric, gap-filled elevation grid per region.


rule synthetic_dem:
    """Generate a synthetic shield-flank DEM with a cinder-cone field and its true cones."""
    output:
        dem=paths.DEM,
        cones=paths.SYNTHETIC_CONES,
    log:
        paths.log("dem", "{region}"),
    benchmark:
        paths.benchmark("dem", "{region}")
    wildcard_constraints:
        region=alternation(SYNTHETIC),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(20),
    params:
        region=region_settings,
    script:
        "../scripts/synthetic_dem.py"


rule scene_dem:
    """Compose a training scene: the donors' labelled cones (and synthetic ones) pasted onto ground, degraded as SRTM."""
    input:
        unpack(scene_donors),
    output:
        dem=paths.DEM,
        cones=paths.SYNTHETIC_CONES,
    log:
        paths.log("dem", "{region}"),
    benchmark:
        paths.benchmark("dem", "{region}")
    wildcard_constraints:
        region=alternation(SCENES),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(3000),
        runtime=per_attempt(20),
    params:
        region=region_settings,
        radius_fields=scene_donor_radius_fields,
    script:
        "../scripts/scene_dem.py"


rule dem:
    """Mosaic, clip and reproject the region's DEM file(s) or 3DEP tiles to its metric grid; fill small voids."""
    input:
        dem=dem_sources,
    output:
        dem=paths.DEM,
    log:
        paths.log("dem", "{region}"),
    benchmark:
        paths.benchmark("dem", "{region}")
    wildcard_constraints:
        region=alternation([r for r in FILE_BASED + USGS3DEP if r in UNTILED]),
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(30),
    params:
        region=region_settings,
        dem=config["dem"],
    script:
        "../scripts/dem.py"
