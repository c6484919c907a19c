"""Running one workflow step: logging to the rule's log file and one-line errors.

Scripts under ``scripts/`` call :func:`run_step`; the library itself never imports snakemake.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from cinderseg.core.errors import CinderSegError, write_failure

T = TypeVar("T")
log = logging.getLogger("cinderseg")

# GDAL's block cache defaults to 5% of RAM (6 GB on a 128 GB node): cap it so that a step's memory
# stays flat whatever the machine. Megabytes; a value set in the environment wins.
GDAL_CACHEMAX_MB = "256"

#: Log records in a step's log file, and warnings and errors on stderr (the steps and the CLI).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StderrFormatter(logging.Formatter):
    """The one format of what cinderseg writes on stderr: ``cinderseg: LEVEL: message`` for warnings
    and errors, ``cinderseg: message`` for notices (progress, the device in use)."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return f"cinderseg: {level}{record.getMessage()}"


# The CPU time run_step logs at the end of a step (read back by job_cpu_seconds).
_CPU_LINE = re.compile(r" done \S+ in [0-9.]+ s, CPU ([0-9.]+) s ")


def setup_logging(log_path: str | Path | None) -> None:
    """Send the library's log records to ``log_path`` (the rule's log) and warnings to stderr."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(LOG_FORMAT)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_path, mode="w", encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(StderrFormatter())
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
    log.info(
        "done %s in %.1f s, CPU %.2f s (user + system of all threads and child processes)",
        name, time.perf_counter() - started, cpu_seconds(),
    )  # fmt: skip
    return result


def cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used since it started, all threads together,
    and its child processes that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def job_cpu_seconds(log_path: str | Path) -> float | None:
    """The CPU seconds a step logged at its end (:func:`run_step`), None if the log has none."""
    try:
        text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = _CPU_LINE.findall(text)
    return float(found[-1]) if found else None
