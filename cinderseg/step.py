"""Running one workflow step: logging to the rule's log file and one-line errors.

Scripts under ``scripts/`` call :func:`run_step`; the library itself never imports snakemake.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from cinderseg.errors import CinderSegError, write_failure

T = TypeVar("T")
log = logging.getLogger("cinderseg")

# GDAL's block cache defaults to 5% of RAM (6 GB on a 128 GB node): cap it so that a step's memory
# stays flat whatever the machine. Megabytes; a value set in the environment wins.
GDAL_CACHEMAX_MB = "256"


def setup_logging(log_path: str | Path | None) -> None:
    """Send the library's log records to ``log_path`` (the rule's log) and warnings to stderr."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_path, mode="w", encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("cinderseg: %(levelname)s: %(message)s"))
    root.addHandler(err)
    logging.captureWarnings(True)


def _fail(err: CinderSegError) -> NoReturn:
    log.error("%s", err)
    print(f"cinderseg: error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(1) from None


def run_step(log_path: str | Path | None, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``func`` with logging set up; turn a CinderSegError into one line on stderr and exit 1.

    So is a write that no retry fixes (full disk, read-only or unwritable folder). Other unexpected
    exceptions keep their traceback (in the log and on stderr): they are bugs.
    """
    try:
        setup_logging(log_path)
    except OSError as err:
        failure = write_failure(err, log_path)
        if failure is None:
            raise
        _fail(failure)
    os.environ.setdefault("GDAL_CACHEMAX", GDAL_CACHEMAX_MB)
    name = getattr(func, "__name__", str(func))
    log.info("start %s", name)
    started = time.perf_counter()
    try:
        result = func(*args, **kwargs)
    except CinderSegError as err:
        _fail(err)
    except Exception as err:
        failure = write_failure(err)
        if failure is not None:
            _fail(failure)
        log.exception("unexpected error in %s", name)
        raise
    log.info("done %s in %.1f s", name, time.perf_counter() - started)
    return result
