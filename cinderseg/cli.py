"""Command line: ``cinderseg predict`` (or ``python -m cinderseg predict``) maps the cones of any DEM.

The same code path as the workflow's steps (dem -> features -> predict -> vectorize), in a scratch
folder beside the output, with the settings the model was trained with (from its model card):

    cinderseg predict --model results/models/unet/model.keras \\
        --dem my_volcano.tif --out my_volcano_cones.gpkg --probability my_volcano_probability.tif

Progress shows as a bar on a terminal (lines otherwise); ``--quiet`` hides it.

Without ``--model`` (or with ``--model pretrained``) it applies the model shipped in
``cinderseg/pretrained/`` (trained on Mauna Kea's labelled cones, composite scenes of them and synthetic
terrain, at 30-90 m) and its learned second stage: cones on any DEM, no labels needed.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cinderseg.core.errors import CinderSegError
from cinderseg.core.modelcard import (
    PRETRAINED_KEYWORD,
    model_path,
    read_model_card,
    training_resolution_range_m,
)
from cinderseg.core.schema import section_schema
from cinderseg.core.step import StderrFormatter
from cinderseg.nn.runtime import NOTICE
from cinderseg.nn.settings import PredictSettings

log = logging.getLogger("cinderseg")

#: Metres per degree of latitude (and of longitude at the equator), for the size of geographic pixels.
METRES_PER_DEGREE = 111_320.0


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
    second_stage: str | None = None,
    predict_config: dict[str, Any] | None = None,
    threads: int = 1,
    progress: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Map the cones of a DEM with a trained model; write the cone layer (and the probability raster).

    ``dem_paths``: one or more GDAL-readable DEMs (mosaicked), any CRS; reprojected to a metric
    grid of ``resolution_m`` (default: :func:`default_resolution_m`) in ``crs`` (default: the UTM
    zone of the centre). The features use the settings recorded in the model card; the threshold
    and ``second_stage`` ('pretrained', 'none' or a verifier JSON) default to the vectorize
    defaults. Returns a summary dict.
    """
    from cinderseg.cones.vectorize import VectorizeSettings, vectorize_cones
    from cinderseg.core.raster import check_input_file
    from cinderseg.nn.predict import predict_probability
    from cinderseg.terrain.dem import prepare_dem
    from cinderseg.terrain.features import FeatureSettings, compute_features

    started = time.perf_counter()
    card = read_model_card(model_path)
    for path in dem_paths:
        check_input_file(path, what="DEM")
    vectorize_config: dict[str, Any] = {}
    if threshold is not None:
        vectorize_config["threshold"] = threshold
    if second_stage is not None:
        vectorize_config["second_stage"] = second_stage
    vectorize_settings = VectorizeSettings.from_config(vectorize_config)
    predict_settings = PredictSettings.from_config(dict(predict_config or {}))
    resolution = resolution_m or default_resolution_m(card, dem_paths[0])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".cinderseg-", dir=work_dir or out_path.parent))
    try:
        dem = scratch / "dem.tif"
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
            progress=progress,
        )
        cones = vectorize_cones(probability, dem, scratch / "cones.gpkg", vectorize_settings, workers=threads)
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
        "second_stage": vectorize_settings.second_stage,
        "predict": stats,
        "seconds": round(time.perf_counter() - started, 1),
    }


def native_resolution_m(path: str | os.PathLike[str]) -> float:
    """A DEM's pixel size in metres: the pixel's square-root area, for a geographic CRS (degrees) at
    the latitude of the DEM's centre (e.g. 1 arc second at 20 deg N: about 30 m)."""
    from cinderseg.core.raster import open_raster

    with open_raster(path, what="DEM") as ds:
        dx, dy = abs(ds.transform.a), abs(ds.transform.e)
        if not ds.crs.is_geographic:
            return float(math.sqrt(dx * dy))
        lat = math.radians((ds.bounds.bottom + ds.bounds.top) / 2.0)
        return float(math.sqrt(dx * METRES_PER_DEGREE * math.cos(lat) * dy * METRES_PER_DEGREE))


def default_resolution_m(card: dict[str, Any], path: str | os.PathLike[str]) -> float:
    """The pixel size (m) a DEM is mapped at by default: its own, within the range the model was
    trained at (a 10 m lidar DEM of a model trained at 30-90 m is mapped at 30 m, SRTM at 90 m)."""
    native = native_resolution_m(path)
    trained = training_resolution_range_m(card)
    if trained is None:
        return native
    return float(min(max(native, trained[0]), trained[1]))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cinderseg", description=__doc__.splitlines()[0])
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
        "shipped with cinderseg, trained on Mauna Kea and composite terrain at 30-90 m)",
    )
    p.add_argument("--dem", required=True, nargs="+", help="DEM file(s), any GDAL format and CRS (mosaicked)")
    p.add_argument("--out", required=True, help="output cone layer (.gpkg)")
    p.add_argument("--probability", help="also write the probability raster (GeoTIFF) here")
    p.add_argument(
        "--resolution",
        type=float,
        help="pixel size, m (default: the DEM's own, within the range the model was trained at)",
    )
    p.add_argument("--crs", help="metric target CRS, e.g. EPSG:32605 (default: UTM zone of the centre)")
    p.add_argument("--nodata", type=float, help="nodata value of the DEM if not recorded in the file")
    p.add_argument("--threshold", type=float, help="probability threshold of a cone pixel (default 0.5)")
    p.add_argument(
        "--second-stage",
        help="learned second stage: 'pretrained' (the shipped verifier, default), 'none' (the network's "
        "objects only) or a verifier JSON",
    )
    p.add_argument("--window", type=int, help="prediction window in pixels (multiple of 32)")
    tta = section_schema("predict")["properties"]["tta"]["enum"]
    p.add_argument("--tta", choices=tta, help="test-time augmentation")
    runtimes = section_schema("predict")["properties"]["runtime"]["enum"]
    p.add_argument(
        "--runtime",
        choices=runtimes,
        help="what runs the network (default auto: ONNX Runtime when model.onnx lies beside the model)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads of the network, and processes of the second stage",
    )
    p.add_argument("--quiet", action="store_true", help="no progress")
    return parser


def _setup_logging() -> None:
    """Warnings and errors on stderr, and the notices (:data:`cinderseg.nn.runtime.NOTICE`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StderrFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    NOTICE.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cinderseg`` command (and ``python -m cinderseg``); returns the exit status."""
    args = _parser().parse_args(argv)
    _setup_logging()
    predict_config: dict[str, Any] = {}
    if args.window is not None:
        predict_config["window_px"] = args.window
    if args.tta is not None:
        predict_config["tta"] = args.tta
    if args.runtime is not None:
        predict_config["runtime"] = args.runtime
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
            second_stage=args.second_stage,
            predict_config=predict_config,
            threads=max(1, args.threads),
            progress=not args.quiet,
        )
    except CinderSegError as err:
        print(f"cinderseg: error: {err}", file=sys.stderr)
        return 1
    print(f"{summary['cones']} cone(s) -> {summary['out']} ({summary['seconds']} s)")
    return 0
