#!/usr/bin/env bash
# Snakemake runs this inside the new envs/gis.yaml environment (--sdm conda): it installs cinderseg
# from this checkout (editable; the environment already holds its dependencies). CINDERSEG_ROOT is
# set by rules/common.smk to the workflow's directory.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation -e "${CINDERSEG_ROOT:?set CINDERSEG_ROOT to the cinderseg checkout}"
