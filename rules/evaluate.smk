# Accuracy of labelled regions: pixel and object metrics of the network and of the classical baseline.


rule evaluate:
    """Compare the network's and the baseline's cones with the labels: pixel IoU/F1, one-to-one object matching."""
    input:
        probability=paths.PROBABILITY,
        cones=paths.CONES,
        baseline=paths.BASELINE,
        mask=paths.MASK,
        dem=paths.DEM,
        labels=labels_file,
    output:
        metrics=paths.METRICS,
        errors=report(
            region_figure("errors"),
            caption="../report/errors.rst",
            category="Accuracy",
            subcategory="{region}",
        ),
    log:
        paths.log("evaluate", "{region}"),
    benchmark:
        paths.benchmark("evaluate", "{region}")
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(30),
    params:
        evaluate=config["evaluate"],
        threshold=config["vectorize"]["threshold"],
        radius_field=radius_field,
        role=region_role,
    script:
        "../scripts/evaluate.py"


rule metrics_summary:
    """Tabulate the metrics of every labelled region, network and baseline side by side."""
    input:
        expand(paths.METRICS, region=LABELLED),
    output:
        table=report(
            paths.METRICS_SUMMARY,
            caption="../report/metrics_summary.rst",
            category="Accuracy",
        ),
        misses=report(
            paths.MISSES_SUMMARY,
            caption="../report/misses.rst",
            category="Accuracy",
        ),
    log:
        paths.log("metrics_summary", "all"),
    benchmark:
        paths.benchmark("metrics_summary", "all")
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(500),
        runtime=per_attempt(5),
    script:
        "../scripts/metrics_summary.py"
