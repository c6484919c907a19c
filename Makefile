# The two commands of the README: `make run` (set up, then the default run) and
# `make test` (set up, then linters and all tests, the SLURM ones on a local cluster). Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
SNAKEMAKE_ARGS ?=

CROSSVAL_CONFIG ?= config/crossval_synthetic.yaml

.PHONY: run test lint pytest setup slurm bench pretrained pretrained-verifier clean crossval docs lock

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the lock file or the package metadata change: every package at the version of
# requirements.lock (runtime and development tools) by uv (its version from the lock, installed by
# pip; 25 s on a clean clone against 54 s with pip), then cinderseg itself from this checkout.
$(STAMP): $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/python -m pip install --quiet "$$(grep -E '^uv==' requirements.lock)"
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# After installing and testing new versions: requirements.lock from this environment, then the files
# derived from it (requirements.txt, requirements-dev.txt, the pins of envs/*.yaml).
lock:
	$(BIN)/python .ci/pins.py freeze
	$(BIN)/python .ci/pins.py write

# The run, then its HTML report (workflow graph, training curves, maps, figures, metrics).
run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS) --report results/report.html

# Cross-region evaluation only (docs/user-guide.md, "Cross-region evaluation"), of the folds in CROSSVAL_CONFIG:
# `make crossval` (the synthetic leave-one-region-out study), or CROSSVAL_CONFIG=config/other.yaml.
crossval: $(STAMP)
	$(BIN)/snakemake crossval --cores $(CORES) --configfile $(CROSSVAL_CONFIG) $(SNAKEMAKE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint --cores 1
	$(BIN)/python .ci/pins.py check

# The configuration reference, generated from the schema (tests/test_config.py checks it is current).
docs: $(STAMP)
	$(BIN)/python -m cinderseg.workflow.reference > docs/.configuration.md.tmp
	mv docs/.configuration.md.tmp docs/configuration.md

# All tests on PYTEST_WORKERS xdist workers, a module to a worker, the longest modules first
# (tests/conftest.py), then the 20 slowest tests. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
pytest: $(STAMP)
	$(BIN)/python -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder) --durations=20

# Debian's slurmctld, slurmd, slurm-client and munge for tests/test_slurm.py (a real local SLURM),
# installed when missing and this is root with apt-get; otherwise those tests skip (fail under CI).
slurm: $(STAMP)
	$(BIN)/python tests/slurm_cluster.py install

test: lint slurm pytest

# The benchmark suite (bench/README.md), under 20 minutes on 2 cores; `make bench QUICK=1` is the
# 1.5-minute variant of the smoke test; BENCH_ARGS passes other options (e.g. --only memory).
bench: $(STAMP)
	$(BIN)/python -m bench $(if $(QUICK),--quick) $(BENCH_ARGS)

# The model shipped in cinderseg/pretrained/ (docs/user-guide.md, "The shipped model and its recipe"):
# config/pretrain.yaml trains it on Mauna Kea (examples/mauna_kea, 30 and 90 m), composite scenes of its
# cones and synthetic terrain (about 5 minutes on 2 cores), then it is copied into the package.
PRETRAINED_RUN := results/models/pretrained
pretrained: $(STAMP)
	$(BIN)/snakemake $(PRETRAINED_RUN)/model.keras $(PRETRAINED_RUN)/model_card.json $(PRETRAINED_RUN)/model.onnx \
		--cores $(CORES) $(SNAKEMAKE_ARGS) --configfile config/pretrain.yaml
	mkdir -p cinderseg/pretrained
	for f in model.keras model_card.json model.onnx; do \
		cp $(PRETRAINED_RUN)/$$f cinderseg/pretrained/.$$f.tmp && mv cinderseg/pretrained/.$$f.tmp cinderseg/pretrained/$$f; \
	done

# The learned second stage shipped beside it (cinderseg/pretrained/verifier.json): the recipe trained
# leaving out each Mauna Kea block in turn (bench/recipe_folds.py, about 1 hour on 2 cores), then three
# verifier fits on their out-of-fold candidates and samples of the candidates on two real DEMs without
# volcanoes, averaged (bench/second_stage.py, about 25 minutes); also prints their scores.
VERIFIER_WORK := bench/work/recipe_folds
pretrained-verifier: $(STAMP)
	$(BIN)/python -m bench.recipe_folds --workdir $(VERIFIER_WORK) --seed 42
	$(BIN)/python -m bench.negative_dems --out resources/negative_dems
	$(BIN)/python -m bench.second_stage --workdir $(VERIFIER_WORK) --seed 42 --negatives resources/negative_dems --ship cinderseg/pretrained/.verifier.json.tmp
	mv cinderseg/pretrained/.verifier.json.tmp cinderseg/pretrained/verifier.json
	$(BIN)/python -m bench.recipe_folds --workdir $(VERIFIER_WORK) --seed 42 --score-only --card cinderseg/pretrained/model_card.json

clean:
	rm -rf results .snakemake
