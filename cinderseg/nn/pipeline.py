"""The training input pipeline: the tiles of the training regions, read lazily for tf.data.

Data. Tiles come from one ``.npz`` + manifest CSV per training region (see :mod:`cinderseg.data.tiles`),
memory-mapped: a tile is read from disk only when the pipeline needs it, so memory does not grow with
the number of tiles. Training draws from the tiles whose manifest ``split`` is ``train``; validation
uses the ``val`` tiles, the spatially blocked hold-out made by the tiles step (never a random split),
in storage order and without augmentation.

Sampling. Each epoch is ``steps`` batches of ``batch_size`` tiles, drawn as a pure function of
``(seed, epoch)`` (so that a resumed run sees exactly the tiles an uninterrupted run would): tiles
holding cone pixels enter a shuffled pool ``positive_oversampling`` times as often as the others
(fractional part by chance), pools follow one another until the epoch is full. With
``steps_per_epoch: 0`` an epoch is one pass over that oversampled pool.

Augmentation. One of the 8 symmetries of the square (quarter turns, optionally a mirror) is applied
to a tile and its mask alike (:func:`augment_pair`). A :data:`TileTransform` applies per-tile factors
(the training dataset, :func:`cinderseg.nn.train.train_dataset`, exaggerates relief and zooms with it).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from cinderseg.core.errors import InputError
from cinderseg.data.tiles import load_tiles, read_manifest
from cinderseg.nn.settings import TrainSettings

log = logging.getLogger("cinderseg")


@dataclass(frozen=True)
class TileSource:
    """The memory-mapped tiles of one training region and their manifest's split and positive flags."""

    region: str
    tiles_path: Path
    manifest_path: Path
    x: np.ndarray
    y: np.ndarray
    channels: tuple[str, ...]
    split: np.ndarray
    positive: np.ndarray


@dataclass(frozen=True)
class TrainingData:
    """Training and validation tiles of all training regions.

    ``train`` and ``val`` hold one ``(source, tile)`` row per tile (indices into ``sources`` and
    into that source's arrays); ``*_positive`` flags tiles with cone pixels.
    """

    sources: tuple[TileSource, ...]
    channels: tuple[str, ...]
    tile_size: int
    train: np.ndarray
    val: np.ndarray
    train_positive: np.ndarray
    val_positive: np.ndarray
    fingerprint: str

    def summary(self) -> dict[str, Any]:
        """Counts for logs and the model card."""
        return {
            "regions": [s.region for s in self.sources],
            "train_tiles": len(self.train),
            "train_positive_tiles": int(self.train_positive.sum()),
            "val_tiles": len(self.val),
            "val_positive_tiles": int(self.val_positive.sum()),
            "tile_size": self.tile_size,
            "channels": list(self.channels),
        }


def data_fingerprint(
    tiles_paths: Sequence[str | os.PathLike[str]],
    manifest_paths: Sequence[str | os.PathLike[str]],
    regions: Sequence[str] | None = None,
) -> str:
    """SHA-256 (hex) of the training data: region names, manifest contents and tiles file sizes."""
    h = hashlib.sha256()
    names = list(regions) if regions is not None else [Path(p).stem for p in tiles_paths]
    for name, tiles, manifest in zip(names, tiles_paths, manifest_paths, strict=True):
        h.update(f"{name}\0{Path(tiles).stat().st_size}\0".encode())
        h.update(Path(manifest).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def open_training_data(
    tiles_paths: Sequence[str | os.PathLike[str]],
    manifest_paths: Sequence[str | os.PathLike[str]],
    regions: Sequence[str] | None = None,
    *,
    tile_size: int | None = None,
) -> TrainingData:
    """Open (memory-map) the tiles of the training regions and index their train and val tiles.

    Raises InputError (one line naming the files) when files disagree on channels or tile size,
    when the tiles are not of ``tile_size`` px (the configured ``tiling.size``), when there is no
    training tile, no training tile with cone pixels, or no validation tile.
    """
    if len(tiles_paths) != len(manifest_paths):
        raise ValueError("open_training_data: one manifest per tiles file expected")
    if not tiles_paths:
        raise InputError("no training regions: set role 'train' on at least one labelled region")
    names = list(regions) if regions is not None else [Path(p).stem for p in tiles_paths]
    if len(names) != len(tiles_paths):
        raise ValueError("open_training_data: one region name per tiles file expected")
    sources = [
        _open_source(name, Path(t), Path(m))
        for name, t, m in zip(names, tiles_paths, manifest_paths, strict=True)
    ]
    size = _check_sources(sources, tile_size)
    train, train_pos = _split_rows(sources, "train")
    val, val_pos = _split_rows(sources, "val")
    _check_splits(sources, train, train_pos, val, val_pos)
    return TrainingData(
        sources=tuple(sources),
        channels=sources[0].channels,
        tile_size=size,
        train=train,
        val=val,
        train_positive=train_pos,
        val_positive=val_pos,
        fingerprint=data_fingerprint(tiles_paths, manifest_paths, names),
    )


def _open_source(name: str, tiles_path: Path, manifest_path: Path) -> TileSource:
    """The memory-mapped tiles of one region with its manifest; InputError if their counts differ."""
    x, y, channels = load_tiles(tiles_path, mmap=True)
    manifest = read_manifest(manifest_path)
    if len(manifest) != x.shape[0]:
        raise InputError(
            f"tiles of region '{name}': {tiles_path} holds {x.shape[0]} tiles but its manifest "
            f"{manifest_path} lists {len(manifest)}; rerun the tiles step"
        )
    return TileSource(
        region=name,
        tiles_path=tiles_path,
        manifest_path=manifest_path,
        x=x,
        y=y,
        channels=tuple(channels),
        split=manifest["split"].astype(str).to_numpy(),
        positive=(manifest["positive_fraction"].to_numpy(dtype=float) > 0),
    )


def _check_sources(sources: Sequence[TileSource], tile_size: int | None) -> int:
    """The tiles' side in px; InputError unless all regions have the same channels and square tiles of
    one size (``tile_size`` if given)."""
    first = sources[0]
    for s in sources[1:]:
        if s.channels != first.channels:
            raise InputError(
                f"tiles of the training regions have different channels: {first.tiles_path} has "
                f"[{', '.join(first.channels)}], {s.tiles_path} has [{', '.join(s.channels)}]"
            )
        if s.x.shape[1:3] != first.x.shape[1:3]:
            raise InputError(
                f"tiles of the training regions have different sizes: {first.tiles_path} has "
                f"{first.x.shape[1]} px tiles, {s.tiles_path} has {s.x.shape[1]} px tiles"
            )
    size = int(first.x.shape[1])
    if first.x.shape[2] != size:
        raise InputError(f"tiles file: tiles are not square ({first.x.shape[1:3]}): {first.tiles_path}")
    if tile_size is not None and size != tile_size:
        raise InputError(
            f"tiles file: tiles are {size} px but tiling.size is {tile_size}; rerun the tiles step: "
            f"{first.tiles_path}"
        )
    return size


def _split_rows(sources: Sequence[TileSource], split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(source, tile)`` rows of the tiles of ``split``, and their positive flags."""
    parts = [
        np.stack([np.full(n.size, i, dtype=np.int64), n], axis=1)
        for i, s in enumerate(sources)
        for n in [np.flatnonzero(s.split == split).astype(np.int64)]
    ]
    idx = np.concatenate(parts, axis=0) if parts else np.zeros((0, 2), np.int64)
    pos = np.array([sources[i].positive[t] for i, t in idx], dtype=bool)
    return idx, pos


def _check_splits(
    sources: Sequence[TileSource],
    train: np.ndarray,
    train_pos: np.ndarray,
    val: np.ndarray,
    val_pos: np.ndarray,
) -> None:
    """InputError without training tiles, training tiles with cones or validation tiles; a warning
    without validation tiles with cones."""
    files = ", ".join(str(s.tiles_path) for s in sources)
    if len(train) == 0:
        raise InputError(f"no training tiles (split 'train') in {files}")
    if not train_pos.any():
        raise InputError(
            f"no cone pixels in the {len(train)} training tiles of {files}: training needs tiles with "
            "cones (check the labels of the training regions)"
        )
    if len(val) == 0:
        raise InputError(
            f"no validation tiles (split 'val') in {files}: validation needs the spatial hold-out; lower "
            "tiling.split_block_px or raise tiling.val_fraction (or add a training region)"
        )
    if not val_pos.any():
        log.warning(
            "no cone pixels in the %d validation tiles of %s: validation IoU, precision and recall "
            "say little; consider another tiling.seed or a larger training region",
            len(val),
            files,
        )


def epoch_steps(n_tiles: int, n_positive: int, settings: TrainSettings) -> int:
    """Batches per epoch: ``steps_per_epoch``, or (0) one pass over the oversampled pool of tiles."""
    if settings.steps_per_epoch:
        return settings.steps_per_epoch
    pool = (n_tiles - n_positive) + n_positive * settings.positive_oversampling
    return max(1, math.ceil(pool / settings.batch_size))


def epoch_draws(
    positive: np.ndarray,
    epoch: int,
    n_samples: int,
    *,
    oversampling: float,
    augment: bool,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Tile indices (into ``positive``) and augmentation codes (0-7) of one epoch.

    A pure function of ``(seed, epoch)``: tiles flagged positive enter each shuffled pool
    ``floor(oversampling)`` times plus once more with probability ``frac(oversampling)``, other
    tiles once; pools are concatenated until ``n_samples`` are drawn. Codes are 0 without
    augmentation.
    """
    positive = np.asarray(positive, dtype=bool)
    n = positive.size
    rng = np.random.default_rng([seed % 2**32, epoch])
    whole = math.floor(oversampling)
    frac = oversampling - whole
    n_pos = int(positive.sum())
    chunks, total = [], 0
    while total < n_samples:
        reps = np.ones(n, dtype=np.int64)
        reps[positive] = whole + (rng.random(n_pos) < frac)
        pool = np.repeat(np.arange(n, dtype=np.int64), reps)
        rng.shuffle(pool)
        chunks.append(pool)
        total += pool.size
    idx = np.concatenate(chunks)[:n_samples]
    codes = rng.integers(0, 8, size=n_samples) if augment else np.zeros(n_samples, dtype=np.int64)
    return idx, codes.astype(np.int64)


def augment_pair(x: tf.Tensor, y: tf.Tensor, code: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply symmetry ``code`` of the square to a tile (H, W, C) and its mask (H, W, 1) alike.

    ``code % 4`` quarter turns counter-clockwise, then a left-right mirror when ``code >= 4``:
    the 8 codes are the 8 symmetries (cones have no preferred orientation).
    """
    k = tf.cast(code % 4, tf.int32)
    x, y = tf.image.rot90(x, k), tf.image.rot90(y, k)
    mirror = code >= 4
    x = tf.cond(mirror, lambda: tf.image.flip_left_right(x), lambda: x)
    y = tf.cond(mirror, lambda: tf.image.flip_left_right(y), lambda: y)
    return x, y


def augment_numpy(x: np.ndarray, code: int) -> np.ndarray:
    """NumPy counterpart of :func:`augment_pair` for one array (H, W, ...)."""
    out = np.rot90(x, code % 4, axes=(0, 1))
    return out[:, ::-1] if code >= 4 else out


TileTransform = Callable[[np.ndarray, np.ndarray, float, float], tuple[np.ndarray, np.ndarray]]
"""``(x, y, f, s) -> (x, y)``: a tile and its mask transformed with per-tile factors ``f`` and ``s``."""


def tile_loader(
    data: TrainingData, transform: TileTransform | None = None
) -> Callable[..., tuple[tf.Tensor, tf.Tensor]]:
    """A tf.data map function reading tile ``(source, tile)`` from the memory maps as float32; with a
    ``transform`` it takes two factors per tile too and applies it (NumPy, per tile)."""
    sources = data.sources
    size, n_ch = data.tile_size, len(data.channels)

    def read(src: np.ndarray, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = sources[int(src)]
        return np.asarray(s.x[int(tile)], dtype=np.float32), np.asarray(s.y[int(tile)], dtype=np.float32)

    def read_transformed(
        src: np.ndarray, tile: np.ndarray, f: np.ndarray, s: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        x, y = transform(*read(src, tile), float(f), float(s))  # type: ignore[misc]
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)

    def load(src: tf.Tensor, tile: tf.Tensor, *factors: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if transform is not None:
            x, y = tf.numpy_function(
                read_transformed, [src, tile, *factors], [tf.float32, tf.float32], stateful=False
            )
        else:
            x, y = tf.numpy_function(read, [src, tile], [tf.float32, tf.float32], stateful=False)
        x.set_shape((size, size, n_ch))
        y.set_shape((size, size, 1))
        return x, y

    return load


def dataset_options(threads: int) -> tf.data.Options:
    """Deterministic tf.data options with a private pool of ``threads`` threads."""
    opts = tf.data.Options()
    opts.deterministic = True
    opts.threading.private_threadpool_size = max(1, threads)
    opts.threading.max_intra_op_parallelism = 1
    return opts


def eval_dataset(
    data: TrainingData, batch_size: int, *, split: str = "val", threads: int = 1
) -> tf.data.Dataset:
    """Batches ``(x, y)`` of the ``val`` (or ``train``) tiles in storage order, not augmented."""
    pairs = data.val if split == "val" else data.train
    ds = tf.data.Dataset.from_tensor_slices((pairs[:, 0], pairs[:, 1]))
    ds = ds.map(tile_loader(data), num_parallel_calls=max(1, threads), deterministic=True)
    return ds.batch(batch_size).prefetch(2).with_options(dataset_options(threads))
