"""The learned second stage: gradient-boosted trees that score cone candidates, kept as plain JSON.

A :class:`Verifier` reads the :data:`cinderseg.cones.candidates.FEATURES` of each candidate and gives
the probability that it is a cone. It is fitted with scikit-learn's ``GradientBoostingClassifier``
(:func:`fit_verifier`) and stored as its trees' arrays in JSON (no pickle: a verifier file is data,
safe to load from anywhere), evaluated here with numpy alone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cinderseg.core.errors import InputError
from cinderseg.core.raster import atomic_write

#: Value that stands for a missing feature (NaN) in fitting and scoring alike.
MISSING = -999.0
FORMAT = "cinderseg-verifier-1"


@dataclass(frozen=True)
class Tree:
    """One regression tree: node arrays as in scikit-learn (-1 marks a leaf's children)."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The leaf value of each row of ``x`` (rows, features); a row goes left when x <= threshold."""
        node = np.zeros(len(x), dtype=np.int64)
        active = self.left[node] >= 0
        while active.any():
            idx = np.flatnonzero(active)
            n = node[idx]
            go_left = x[idx, self.feature[n]] <= self.threshold[n]
            node[idx] = np.where(go_left, self.left[n], self.right[n])
            active = self.left[node] >= 0
        return self.value[node]


@dataclass(frozen=True)
class Verifier:
    """A boosted-tree classifier of cone candidates: ``sigmoid(init + rate * sum(tree outputs))``."""

    features: tuple[str, ...]
    init: float
    learning_rate: float
    trees: tuple[Tree, ...]
    threshold: float = 0.5
    meta: dict[str, Any] = field(default_factory=dict)

    def matrix(self, table: Any) -> np.ndarray:
        """The feature matrix (rows, features) of a table holding :attr:`features` as columns."""
        missing = [name for name in self.features if name not in table]
        if missing:
            raise InputError(f"verifier: candidate features missing: {', '.join(missing)}")
        x = np.column_stack([np.asarray(table[name], dtype=np.float64) for name in self.features])
        return np.where(np.isfinite(x), x, MISSING)

    def probability(self, table: Any) -> np.ndarray:
        """Probability (0-1) that each candidate is a cone."""
        x = self.matrix(table)
        raw = np.full(len(x), self.init)
        for tree in self.trees:
            raw += self.learning_rate * tree.predict(x)
        return 1.0 / (1.0 + np.exp(-np.clip(raw, -500.0, 500.0)))  # no overflow: exp(500) is finite

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the verifier (JSON, atomically)."""
        data = {
            "format": FORMAT,
            "features": list(self.features),
            "init": self.init,
            "learning_rate": self.learning_rate,
            "threshold": self.threshold,
            "meta": self.meta,
            "trees": [
                {
                    "left": t.left.tolist(),
                    "right": t.right.tolist(),
                    "feature": t.feature.tolist(),
                    "threshold": [round(float(v), 9) for v in t.threshold],
                    "value": [round(float(v), 9) for v in t.value],
                }
                for t in self.trees
            ],
        }
        with atomic_write(path) as tmp:
            Path(tmp).write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")


def load_verifier(path: str | os.PathLike[str]) -> Verifier:
    """A verifier written by :meth:`Verifier.to_json`; InputError (one line naming the file) otherwise."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
        trees = tuple(
            Tree(
                left=np.asarray(t["left"], dtype=np.int64),
                right=np.asarray(t["right"], dtype=np.int64),
                feature=np.asarray(t["feature"], dtype=np.int64),
                threshold=np.asarray(t["threshold"], dtype=np.float64),
                value=np.asarray(t["value"], dtype=np.float64),
            )
            for t in data["trees"]
        )
        verifier = Verifier(
            features=tuple(data["features"]),
            init=float(data["init"]),
            learning_rate=float(data["learning_rate"]),
            trees=trees,
            threshold=float(data.get("threshold", 0.5)),
            meta=dict(data.get("meta") or {}),
        )
    except FileNotFoundError as err:
        raise InputError(f"verifier: file not found: {p}") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"verifier: {p} is not a cinderseg verifier ({err})") from err
    n = len(verifier.features)
    for tree in verifier.trees:
        if tree.feature.size and (tree.feature[tree.left >= 0] >= n).any():
            raise InputError(f"verifier: {p}: a tree reads a feature beyond the {n} listed")
    return verifier


def fit_verifier(
    table: Any,
    labels: Sequence[bool] | np.ndarray,
    features: Sequence[str],
    *,
    seed: int = 0,
    n_trees: int = 300,
    depth: int = 3,
    learning_rate: float = 0.05,
    threshold: float = 0.5,
    meta: dict[str, Any] | None = None,
) -> Verifier:
    """Fit a verifier on candidates (``table`` with the ``features`` columns) and whether each is a
    true cone (``labels``), with scikit-learn's gradient boosting (log loss, subsampled rows)."""
    from sklearn.ensemble import GradientBoostingClassifier  # fitting only: scoring needs numpy alone

    y = np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        raise InputError("verifier: the training candidates need both cones and non-cones")
    probe = Verifier(tuple(features), 0.0, 0.0, ())
    x = probe.matrix(table)
    model = GradientBoostingClassifier(
        n_estimators=n_trees, max_depth=depth, learning_rate=learning_rate, subsample=0.8, random_state=seed
    )
    model.fit(x, y)
    prior = float(y.mean())
    trees = tuple(
        Tree(
            left=est.tree_.children_left.astype(np.int64),
            right=est.tree_.children_right.astype(np.int64),
            feature=np.maximum(est.tree_.feature, 0).astype(np.int64),
            threshold=est.tree_.threshold.astype(np.float64),
            value=est.tree_.value[:, 0, 0].astype(np.float64),
        )
        for est in model.estimators_[:, 0]
    )
    info = {"n_candidates": len(y), "n_cones": int(y.sum()), "seed": seed, **(meta or {})}
    return Verifier(
        tuple(features), math.log(prior / (1 - prior)), learning_rate, trees, threshold=threshold, meta=info
    )


def average_verifiers(verifiers: Sequence[Verifier], *, meta: dict[str, Any] | None = None) -> Verifier:
    """One verifier whose log-odds are the mean of ``verifiers``' (same features, in the same order):
    their trees side by side, each tree's values scaled by its verifier's learning rate over the
    count, so that it scores exactly as ``sigmoid(mean(logit(p_i)))`` and is stored as any other."""
    if not verifiers:
        raise ValueError("average_verifiers: no verifiers")
    features = verifiers[0].features
    if any(v.features != features for v in verifiers):
        raise InputError("verifier: the verifiers to average read different features")
    n = len(verifiers)
    trees = tuple(
        Tree(t.left, t.right, t.feature, t.threshold, t.value * (v.learning_rate / n))
        for v in verifiers
        for t in v.trees
    )
    return Verifier(
        features,
        float(np.mean([v.init for v in verifiers])),
        1.0,
        trees,
        threshold=verifiers[0].threshold,
        meta=dict(meta or {}),
    )
