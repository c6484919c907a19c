"""Command line: ``python -m cinderseg predict`` applies a trained model to any DEM.

The same code path as the workflow's steps (dem -> features -> predict -> vectorize), in a scratch
folder beside the output, with the settings the model was trained with (from its model card):

    python -m cinderseg predict --model results/models/unet/model.keras \\
        --dem my_volcano.tif --out my_volcano_cones.gpkg --probability my_volcano_probability.tif

Without ``--model`` (or with ``--model pretrained``) it applies the model shipped in
``cinderseg/pretrained/``, trained on synthetic terrain only: cones on any DEM, no labels needed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from cinderseg.config import MODEL_CARD, PRETRAINED_KEYWORD, model_path
from cinderseg.errors import CinderSegError, InputError

log = logging.getLogger("cinderseg")

CARD_NAME = MODEL_CARD


class ProgressBar:
    """A one-line text progress bar on a stream (a terminal: redrawn in place; else a few lines)."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.started = time.perf_counter()
        self.tty = self.stream.isatty()
        self._last_tenth = -1

    def __call__(self, done: int, total: int) -> None:
        frac = done / total if total else 1.0
        elapsed = time.perf_counter() - self.started
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        filled = round(frac * self.width)
        line = (
            f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
            f"{elapsed:.0f} s elapsed, {eta:.0f} s left"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= total else ""))
        elif int(frac * 10) > self._last_tenth or done >= total:
            self._last_tenth = int(frac * 10)
            self.stream.write(line + "\n")
        self.stream.flush()


def read_model_card(model_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card written beside a trained model (``model_card.json``); InputError if unusable."""
    card_path = Path(model_path).with_name(CARD_NAME)
    if not card_path.is_file():
        raise InputError(
            f"{card_path}: model card not found beside the model (it records the channels and "
            "settings the model was trained with)"
        )
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{card_path}: not a readable model card ({err})") from err
    if not isinstance(card, dict) or not isinstance(card.get("channels"), list):
        raise InputError(f"{card_path}: not a cinderseg model card (no 'channels' list)")
    return card


def training_resolution_m(card: dict[str, Any]) -> float | None:
    """The pixel size (m) the model was trained at: the median over its training regions, if recorded."""
    values = [float(v) for v in (card.get("resolution_m") or {}).values()]
    return statistics.median(values) if values else None


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with stderr silenced: its C++ start-up lines (oneDNN, CUDA) ignore
    TF_CPP_MIN_LOG_LEVEL and would bury the command's own one-line messages."""
    if "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def predict_dem(
    model_path: str | os.PathLike[str],
    dem_paths: Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    *,
    probability_path: str | os.PathLike[str] | None = None,
    resolution_m: float | None = None,
    crs: str | None = None,
    nodata: float | None = None,
    threshold: float | None = None,
    predict_config: dict[str, Any] | None = None,
    threads: int = 1,
    progress: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Map the cones of a DEM with a trained model; write the cone layer (and the probability raster).

    ``dem_paths``: one or more GDAL-readable DEMs (mosaicked), any CRS; reprojected to a metric
    grid of ``resolution_m`` (default: the model's training resolution, else the DEM's own pixel
    size) in ``crs`` (default: the UTM zone of the centre). The features use the settings recorded
    in the model card, the threshold defaults to the vectorize default. Returns a summary dict.
    """
    from cinderseg.dem import prepare_dem
    from cinderseg.features import FeatureSettings, compute_features

    _import_tensorflow_quietly()
    from cinderseg.predict import PredictSettings, predict_probability
    from cinderseg.raster import check_input_file
    from cinderseg.vectorize import VectorizeSettings, vectorize_cones

    started = time.perf_counter()
    card = read_model_card(model_path)
    for path in dem_paths:
        check_input_file(path, what="DEM")
    vectorize_settings = VectorizeSettings.from_config({} if threshold is None else {"threshold": threshold})
    predict_settings = PredictSettings.from_config(dict(predict_config or {}))
    resolution = resolution_m or training_resolution_m(card)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".cinderseg-", dir=work_dir or out_path.parent))
    try:
        dem = scratch / "dem.tif"
        if resolution is None:
            resolution = _native_resolution_m(dem_paths[0])
        log.info("DEM: %d file(s) -> %s m grid", len(dem_paths), resolution)
        prepare_dem([Path(p) for p in dem_paths], dem, resolution_m=resolution, crs=crs, nodata=nodata)
        features = scratch / "features.tif"
        compute_features(dem, features, FeatureSettings.from_config(card.get("features") or {}))
        probability = scratch / "probability.tif"
        stats = predict_probability(
            features,
            model_path,
            probability,
            predict_settings,
            expected_channels=card["channels"],
            threads=threads,
            progress=ProgressBar("predict") if progress else None,
        )
        cones = vectorize_cones(probability, dem, scratch / "cones.gpkg", vectorize_settings)
        if probability_path is not None:
            Path(probability_path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(probability, probability_path)
        os.replace(scratch / "cones.gpkg", out_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "cones": len(cones),
        "out": str(out_path),
        "probability": str(probability_path) if probability_path else None,
        "resolution_m": resolution,
        "threshold": vectorize_settings.threshold,
        "predict": stats,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _native_resolution_m(path: str | os.PathLike[str]) -> float:
    """Pixel size in metres of a projected DEM; InputError for a geographic one (no metric size)."""
    from cinderseg.raster import open_raster

    with open_raster(path, what="DEM") as ds:
        if ds.crs.is_geographic:
            raise InputError(
                f"{path}: geographic CRS and the model card records no training resolution; "
                "pass --resolution (metres)"
            )
        return float(abs(ds.transform.a))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cinderseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "predict",
        help="map the cones of a DEM with a trained model",
        description="Map the cones of a DEM with a trained model: cone polygons with morphometry.",
    )
    p.add_argument(
        "--model",
        default=PRETRAINED_KEYWORD,
        help="trained model (.keras) with model_card.json beside it (default: 'pretrained', the model "
        "shipped with cinderseg, trained on synthetic terrain only)",
    )
    p.add_argument("--dem", required=True, nargs="+", help="DEM file(s), any GDAL format and CRS (mosaicked)")
    p.add_argument("--out", required=True, help="output cone layer (.gpkg)")
    p.add_argument("--probability", help="also write the probability raster (GeoTIFF) here")
    p.add_argument("--resolution", type=float, help="pixel size, m (default: the training one)")
    p.add_argument("--crs", help="metric target CRS, e.g. EPSG:32605 (default: UTM zone of the centre)")
    p.add_argument("--nodata", type=float, help="nodata value of the DEM if not recorded in the file")
    p.add_argument("--threshold", type=float, help="probability threshold of a cone pixel (default 0.5)")
    p.add_argument("--window", type=int, help="prediction window in pixels (multiple of 32)")
    p.add_argument("--tta", choices=["none", "flips", "d4"], help="test-time augmentation")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cinderseg``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="cinderseg: %(levelname)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    predict_config: dict[str, Any] = {}
    if args.window is not None:
        predict_config["window_px"] = args.window
    if args.tta is not None:
        predict_config["tta"] = args.tta
    try:
        summary = predict_dem(
            model_path(args.model, key="--model"),
            args.dem,
            args.out,
            probability_path=args.probability,
            resolution_m=args.resolution,
            crs=args.crs,
            nodata=args.nodata,
            threshold=args.threshold,
            predict_config=predict_config,
            threads=max(1, args.threads),
            progress=not args.quiet,
        )
    except CinderSegError as err:
        print(f"cinderseg: error: {err}", file=sys.stderr)
        return 1
    print(f"{summary['cones']} cone(s) -> {summary['out']} ({summary['seconds']} s)")
    return 0
