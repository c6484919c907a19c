"""Cross-validation tables: every fold's network and baseline scores, and their means.

The per-fold metrics JSON files come from the evaluate step (:mod:`cinderseg.assess.evaluate`) run on
a fold's held-out area (:mod:`cinderseg.data.folds`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from cinderseg.core.errors import InputError
from cinderseg.core.raster import atomic_write, check_input_file
from cinderseg.data.folds import KINDS, Fold

#: Methods an evaluate metrics JSON scores: the network at its top level, the others under their own key.
METHODS = ("network", "baseline")
#: Columns of results/metrics/crossval_folds.csv (one row per fold and method).
FOLD_COLUMNS = (
    "fold",
    "kind",
    "held_out_region",
    "training_regions",
    "method",
    "n_true",
    "n_pred",
    "n_matched",
    "object_precision",
    "object_recall",
    "object_f1",
    "pixel_iou",
)


def _method_blocks(data: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """(method, its {pixel, objects} block) of every method an evaluate JSON scores, in the order of
    :data:`METHODS`."""
    for method in METHODS:
        block = data if method == "network" else data.get(method)
        if isinstance(block, Mapping) and "objects" in block:
            yield method, block


def _mean(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def crossval_tables(
    json_paths: Iterable[str | os.PathLike[str]],
    folds_csv: str | os.PathLike[str],
    summary_csv: str | os.PathLike[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cross-validation tables from the per-fold metrics JSON files (each with a ``fold`` block).

    ``folds_csv``: one row per fold and method (:data:`FOLD_COLUMNS`; training regions joined by
    ';'). ``summary_csv``: per kind and held-out region, then per kind over all its regions
    (``held_out_region`` 'all') and, with both kinds, over all folds (kind 'all'): ``n_folds``,
    ``<method>_object_f1_mean`` for every method (mean over the folds where F1 is defined) and
    ``network_minus_baseline_object_f1`` (difference of those means). Undefined values are empty
    cells. Both written atomically.
    """
    rows = []
    for path in json_paths:
        p = check_input_file(path, what="fold metrics")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            fold = Fold.from_params(data["fold"])
            for method, block in _method_blocks(data):
                objects = block["objects"]
                rows.append(
                    {
                        "fold": fold.name,
                        "kind": fold.kind,
                        "held_out_region": fold.held_out_region,
                        "training_regions": ";".join(fold.training_regions),
                        "method": method,
                        "n_true": objects["n_true"],
                        "n_pred": objects["n_pred"],
                        "n_matched": objects["n_matched"],
                        "object_precision": objects["precision"],
                        "object_recall": objects["recall"],
                        "object_f1": objects["f1"],
                        "pixel_iou": block["pixel"]["iou"],
                    }
                )
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(
                f"fold metrics: {p} is not a cross-validation metrics file ({type(err).__name__}: {err})"
            ) from err
    table = pd.DataFrame(rows, columns=list(FOLD_COLUMNS))
    methods = list(dict.fromkeys(table["method"]))

    def summary_row(kind: str, region: str, part: pd.DataFrame) -> dict[str, Any]:
        row: dict[str, Any] = {"kind": kind, "held_out_region": region, "n_folds": part["fold"].nunique()}
        for method in methods:
            row[f"{method}_object_f1_mean"] = _mean(part.loc[part["method"] == method, "object_f1"])
        if "network" in methods and "baseline" in methods:
            row["network_minus_baseline_object_f1"] = (
                row["network_object_f1_mean"] - row["baseline_object_f1_mean"]
            )
        return row

    summary = []
    for kind in [k for k in KINDS if k in set(table["kind"])]:
        part = table[table["kind"] == kind]
        for region in dict.fromkeys(part["held_out_region"]):
            summary.append(summary_row(kind, region, part[part["held_out_region"] == region]))
        summary.append(summary_row(kind, "all", part))
    if table["kind"].nunique() > 1:
        summary.append(summary_row("all", "all", table))
    columns = ["kind", "held_out_region", "n_folds", *(f"{m}_object_f1_mean" for m in methods)]
    if "network" in methods and "baseline" in methods:
        columns.append("network_minus_baseline_object_f1")
    summary_table = pd.DataFrame(summary, columns=columns)
    with atomic_write(folds_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_write(summary_csv) as tmp:
        summary_table.to_csv(tmp, index=False, float_format="%.4f")
    return table, summary_table
