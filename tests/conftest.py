"""Shared test settings: the repository root on sys.path; one completed run of the tiny config."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The local USGS 3DEP server's fixtures (served, server, settings), for the download and fault tests.
pytest_plugins = ["tests.usgs_server"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed run of config/tiny.yaml in a scratch directory (shared by the workflow and CLI tests)."""
    from tests.workflow_helpers import snakemake

    work = tmp_path_factory.mktemp("tiny")
    shutil.copy(REPO / "config" / "tiny.yaml", work / "tiny.yaml")
    snakemake(work, "--configfile", "tiny.yaml")
    return work
