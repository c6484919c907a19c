"""Shared test settings: the repository root on sys.path; one completed run of the tiny config for the
whole session (all xdist workers); the SLURM runs started in the background (tests/slurm_runs.py);
how `make test` spreads the tests over its xdist workers."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import slurm_runs  # noqa: E402 (needs the repository on sys.path)
from tests.workflow_helpers import exclusive, shared_path  # noqa: E402

# The local USGS 3DEP server's fixtures (served, server, settings), for the download and fault tests.
pytest_plugins = ["tests.usgs_server"]

# Modules run first, the longest first (measured, 2 cores), so that no worker is left with a long one
# at the end; test_cli's first test builds the shared tiny run.
FIRST = (
    "test_cli.py",
    "test_workflow_errors.py",
    "test_crossval_workflow.py",
    "test_new_volcano.py",
    "test_bench.py",
    "test_predict.py",
    "test_faults.py",
    "test_train_workflow.py",
    "test_train.py",
    "test_model.py",
    "test_envs.py",
    "test_workflow.py",
)
# Modules run last: the SLURM tests read runs that went on in the background meanwhile.
LAST = ("test_slurm.py",)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed run of config/tiny.yaml in a scratch directory, made once for the whole session:
    the first xdist worker to ask runs it, the others wait for it. Read-only for the tests (the
    workflow, CLI, fault and SLURM tests): a test that runs snakemake in it works on a copy."""
    from tests.workflow_helpers import snakemake

    work = shared_path(tmp_path_factory, "tiny_run")
    done, failed = work.with_name("tiny_run.done"), work.with_name("tiny_run.failed")
    with exclusive(work.with_name("tiny_run.lock")):
        if failed.exists():
            pytest.fail(f"the tiny run failed (in another worker):\n{failed.read_text()}")
        if not done.exists():
            work.mkdir()
            shutil.copy(REPO / "config" / "tiny.yaml", work / "tiny.yaml")
            try:
                snakemake(work, "--configfile", "tiny.yaml")
            except AssertionError as err:
                failed.write_text(str(err))
                raise
            done.touch()
    return work


@pytest.fixture(scope="session", autouse=True)
def slurm_in_background(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """When a test marked ``slurm`` is selected: the cluster and its runs, started at the first test
    (of any worker), so that they run while the other tests do (tests/slurm_runs.py)."""
    if any(item.get_closest_marker("slurm") for item in request.session.items):
        slurm_runs.start(shared_path(tmp_path_factory, "slurm"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or the single pytest process) stops the SLURM runs and cluster, if started."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    factory = getattr(session.config, "_tmp_path_factory", None)  # pytest's, as xdist uses it
    if factory is None:
        return
    shared = factory.getbasetemp() / "slurm"
    if shared.exists():
        slurm_runs.stop(shared)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules of ``FIRST`` first, those of ``LAST`` last, the others in between in collection
    order. `make test` (``-n 2 --dist loadfile --no-loadscope-reorder``) hands each module to one
    xdist worker (its module-scoped fixtures are built once) in this order."""

    def rank(item: pytest.Item) -> int:
        name = Path(item.nodeid.split("::", 1)[0]).name
        if name in FIRST:
            return FIRST.index(name)
        return len(FIRST) + 1 + LAST.index(name) if name in LAST else len(FIRST)

    items.sort(key=rank)
