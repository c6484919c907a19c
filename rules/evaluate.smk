# Accuracy of labelled regions: pixel and object metrics of the network and of the classical baseline.


rule evaluate:
    """Compare the network's and the baseline's cones with the labels: pixel IoU/F1, one-to-one object matching."""
    input:
        probability="results/predictions/{region}.tif",
        cones="results/cones/{region}.gpkg",
        baseline="results/baseline/{region}.gpkg",
        mask="results/masks/{region}.tif",
        dem="results/dem/{region}.tif",
        labels=labels_file,
    output:
        metrics="results/metrics/{region}.json",
        errors=report(
            "results/figures/{region}/errors.png",
            caption="../report/errors.rst",
            category="Accuracy",
            subcategory="{region}",
        ),
    log:
        "results/logs/evaluate/{region}.log",
    benchmark:
        "results/benchmarks/evaluate/{region}.tsv"
    conda:
        "../envs/gis.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(30),
    params:
        evaluate=config["evaluate"],
        threshold=config["vectorize"]["threshold"],
        radius_field=lambda wildcards: config["regions"][wildcards.region][
            "radius_field"
        ],
        role=region_role,
    script:
        "../scripts/evaluate.py"


rule metrics_summary:
    """Tabulate the metrics of every labelled region, network and baseline side by side."""
    input:
        expand("results/metrics/{region}.json", region=LABELLED),
    output:
        table=report(
            "results/metrics/summary.csv",
            caption="../report/metrics_summary.rst",
            category="Accuracy",
        ),
    log:
        "results/logs/metrics_summary/all.log",
    benchmark:
        "results/benchmarks/metrics_summary/all.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=per_attempt(500),
        runtime=per_attempt(5),
    script:
        "../scripts/metrics_summary.py"
