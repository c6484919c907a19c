# cinderseg: map volcanic cinder cones in DEMs with a transfer-learned U-Net.
# Run with `make run` (or `snakemake --cores all`); see README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/dem.smk"
include: "rules/mask.smk"
include: "rules/features.smk"
include: "rules/tiles.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/evaluate.smk"
include: "rules/crossval.smk"
include: "rules/maptiles.smk"


wildcard_constraints:
    region=alternation(REGIONS),
    fold=alternation(list(FOLDS)),
    maptile="r[0-9]+c[0-9]+",


rule all:
    default_target: True
    input:
        all_outputs,
