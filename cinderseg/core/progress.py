"""Progress of long loops (downloads, training epochs and batches, prediction windows), one way.

On a terminal a ``rich`` progress bar on stderr; otherwise (a Snakemake job, whose stderr goes to
the rule's log, or a pipe) a log line at every tenth of the work, so logs stay short and readable.

    with track("predict", total=len(windows), unit="windows") as advance:
        for window in windows:
            ...
            advance(1)
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("cinderseg")


def _on_terminal() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def track(
    description: str,
    total: float | None,
    *,
    unit: str = "",
    enabled: bool = True,
    logger: logging.Logger = log,
) -> Iterator[Callable[[float], None]]:
    """A context whose value ``advance(n)`` records ``n`` more units of ``total`` done.

    ``enabled=False`` shows nothing. ``total`` None or 0: a bar without an end (terminal) and one
    line at the end (logs).
    """
    if not enabled:
        yield lambda n=1: None
        return
    if _on_terminal():
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn(unit), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn()]
        with Progress(*columns, console=Console(file=sys.stderr), transient=False) as bar:
            task = bar.add_task(description, total=total or None)
            yield lambda n=1: bar.advance(task, n)
        return
    state = {"done": 0.0, "tenth": 0}
    started = time.perf_counter()

    def advance(n: float = 1) -> None:
        state["done"] += n
        if not total:
            return
        tenth = int(10 * state["done"] / total)
        if tenth > state["tenth"]:
            state["tenth"] = tenth
            elapsed = time.perf_counter() - started
            left = elapsed * (total - state["done"]) / state["done"] if state["done"] else float("nan")
            logger.info(
                "%s: %g/%g %s (%d%%), %.0f s elapsed, %.0f s left",
                description,
                state["done"],
                total,
                unit,
                min(100, 10 * tenth),
                elapsed,
                left,
            )

    yield advance
    if not total:
        logger.info("%s: %g %s in %.0f s", description, state["done"], unit, time.perf_counter() - started)
