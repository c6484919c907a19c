"""Remake the README's picture: a held-out cone map of the Mauna Kea example.

The shipped model was trained on all of Mauna Kea, so the README shows each quarter of the volcano
mapped by the shipped recipe trained without that quarter (``--heldout``: a seed folder of
``python -m bench.recipe_folds`` after ``python -m bench.second_stage``; its second-stage cones of
``mk_test_30``, each fold's inside its own quarter). Without it, ``python -m cinderseg predict`` maps
``examples/mauna_kea/`` with the shipped model (in-sample); ``--cones`` draws any cone layer. The
mapped cones are matched to the 128 labelled cones the way the evaluate step does (centre within 1
radius, radius within 50 %, one to one) and drawn on a hillshade, axes in km (UTM 5N, EPSG:32605)::

    PYTHONPATH=$PWD .venv/bin/python docs/make_figures.py --heldout bench/work/recipe_folds/seed42

writes ``docs/mauna_kea_cones.png`` and prints the counts and scores for the caption.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import rasterio
from matplotlib.lines import Line2D
from PIL import Image
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from cinderseg.assess.matching import match_cones
from cinderseg.assess.pixels import scores
from cinderseg.assess.settings import EvaluateSettings
from cinderseg.data.mask import load_labels
from cinderseg.terrain.hillshade import hillshade

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "mauna_kea"
LABEL_COLOUR = "#0a4bff"  # blue: labelled cones
MAPPED_COLOUR = "#e69f00"  # orange: cones mapped by the shipped model
HILLSHADE_RES_M = 30.0


@dataclass(frozen=True)
class Outcome:
    """Labelled and mapped cones (polygons in the map's metric CRS) split by the one-to-one matching."""

    found: gpd.GeoDataFrame
    missed: gpd.GeoDataFrame
    matched: gpd.GeoDataFrame
    unmatched: gpd.GeoDataFrame

    @property
    def n_true(self) -> int:
        """Labelled cones."""
        return len(self.found) + len(self.missed)

    @property
    def n_pred(self) -> int:
        """Mapped cones."""
        return len(self.matched) + len(self.unmatched)

    def scores(self) -> dict[str, float | None]:
        """Object precision, recall, F1 (and IoU) of the evaluate step."""
        return scores(len(self.found), self.n_pred, self.n_true)


def run_shipped_model(dem: Path, out_dir: Path) -> Path:
    """Cone layer of ``dem`` mapped by the shipped model through the command line (one thread)."""
    cones = out_dir / "cones.gpkg"
    command = [sys.executable, "-m", "cinderseg", "predict", "--dem", str(dem), "--out", str(cones)]
    subprocess.run([*command, "--threads", "1", "--quiet"], check=True)
    return cones


def heldout_cones(seed_dir: Path, out_dir: Path, region: str = "mk_test_30") -> Path:
    """One cone layer of the recipe folds' second-stage cones, each fold's inside its held-out quarter."""
    import pandas as pd

    from cinderseg.assess.matching import cone_circles
    from cinderseg.core.grid import points_in_block
    from cinderseg.data.folds import block_grid

    folds = sorted(seed_dir.glob("fold*"))
    parts = []
    for k, fold_dir in enumerate(folds, start=1):
        cones = gpd.read_file(fold_dir / "second_stage" / f"{region}.gpkg", layer="cones")
        with rasterio.open(fold_dir / "results" / "dem" / f"{region}.tif") as ds:
            x, y, _ = cone_circles(cones)
            block = block_grid(ds.height, ds.width, 2, 2)[k - 1]
            parts.append(cones[points_in_block(x, y, ds.transform, block)])
    out = out_dir / "heldout.gpkg"
    gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=parts[0].crs).to_file(out, layer="cones")
    return out


def match(labels_path: Path, cones_path: Path) -> Outcome:
    """Labels (points with ``radius_m``, buffered) matched to the mapped cones, in the cones' CRS."""
    mapped = gpd.read_file(cones_path)
    truth = load_labels(labels_path, target_crs=mapped.crs)
    result = match_cones(truth, mapped, EvaluateSettings())
    return Outcome(
        found=truth.iloc[result.true_idx],
        missed=truth.iloc[result.unmatched_true],
        matched=mapped.iloc[result.pred_idx],
        unmatched=mapped.iloc[result.unmatched_pred],
    )


def shaded_relief(dem: Path, crs: object) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Hillshade (0..1, sun from the north-west at 45 degrees) of the DEM warped to ``crs`` at 30 m;
    its extent (left, right, bottom, top) in km."""
    with rasterio.open(dem) as src, WarpedVRT(src, crs=crs, resampling=Resampling.bilinear) as vrt:
        scale = abs(vrt.transform.a) / HILLSHADE_RES_M
        shape = (round(vrt.height * scale), round(vrt.width * scale))
        z = vrt.read(1, out_shape=shape, resampling=Resampling.bilinear, masked=True)
        left, bottom, right, top = vrt.bounds
    z = z.astype("float64").filled(np.nan)
    res_y, res_x = (top - bottom) / shape[0], (right - left) / shape[1]
    dzdy_down, dzdx = np.gradient(np.where(np.isnan(z), np.nanmedian(z), z), res_y, res_x)
    shade = hillshade(dzdx, -dzdy_down, azimuth_deg=315.0, altitude_deg=45.0)
    shade[np.isnan(z)] = np.nan
    return shade, (left / 1000, right / 1000, bottom / 1000, top / 1000)


def _outline(ax: plt.Axes, cones: gpd.GeoDataFrame, colour: str, style: str, width: float) -> None:
    """Polygon outlines, coordinates in km."""
    for geom in cones.geometry:
        for part in getattr(geom, "geoms", [geom]):
            x, y = part.exterior.xy
            ax.plot(np.asarray(x) / 1000, np.asarray(y) / 1000, color=colour, ls=style, lw=width)


def draw(
    outcome: Outcome, shade: np.ndarray, extent: tuple[float, float, float, float], what: str
) -> plt.Figure:
    """The map: hillshade, labelled cones in blue, mapped cones in orange; misses and false ones dashed."""
    fig, ax = plt.subplots(figsize=(8.0, 8.4), dpi=110)
    ax.imshow(shade, extent=extent, cmap="gray", vmin=-0.1, vmax=1.0, interpolation="bilinear")
    _outline(ax, outcome.found, LABEL_COLOUR, "-", 1.4)
    _outline(ax, outcome.missed, LABEL_COLOUR, "--", 1.4)
    _outline(ax, outcome.matched, MAPPED_COLOUR, "-", 1.2)
    _outline(ax, outcome.unmatched, MAPPED_COLOUR, "--", 1.2)
    s, n_true = outcome.scores(), outcome.n_true
    handles = [
        Line2D(
            [], [], color=LABEL_COLOUR, ls="-", label=f"labelled, found ({len(outcome.found)} of {n_true})"
        ),
        Line2D([], [], color=LABEL_COLOUR, ls="--", label=f"labelled, missed ({len(outcome.missed)})"),
        Line2D(
            [], [], color=MAPPED_COLOUR, ls="-", label=f"mapped, matches a label ({len(outcome.matched)})"
        ),
        Line2D([], [], color=MAPPED_COLOUR, ls="--", label=f"mapped, no label ({len(outcome.unmatched)})"),
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=9, framealpha=0.9)
    ax.set_xlabel("easting, km (UTM 5N)")
    ax.set_ylabel("northing, km (UTM 5N)")
    ax.set_title(
        f"Mauna Kea (SRTM 90 m, mapped at 30 m): {what}\n"
        f"object precision {s['precision']:.2f}, recall {s['recall']:.2f}, F1 {s['f1']:.2f}",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def save_small_png(fig: plt.Figure, path: Path) -> None:
    """PNG in 256 colours: 192 greys for the hillshade and text, 64 for the coloured outlines (a third
    of the size of the same figure in full RGB, without banding in the hillshade)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    rgb = Image.open(buffer).convert("RGB")
    pixels = np.asarray(rgb).reshape(-1, 3).astype(np.int16)
    coloured = pixels[np.ptp(pixels, axis=1) > 24].astype(np.uint8)
    strip = Image.fromarray(coloured.reshape(1, -1, 3) if len(coloured) else np.zeros((1, 1, 3), np.uint8))
    colours = np.asarray(strip.quantize(64, dither=Image.Dither.NONE).convert("RGB")).reshape(-1, 3)
    greys = np.repeat(np.linspace(0, 255, 192).round().astype(np.uint8)[:, None], 3, axis=1)
    table = np.concatenate([greys, np.unique(colours, axis=0), np.zeros((64, 3), np.uint8)])[:256]
    palette = Image.new("P", (1, 1))
    palette.putpalette(table.ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb.quantize(palette=palette, dither=Image.Dither.NONE).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    """Map (or read) the cones, draw the figure, print the caption's numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dem", type=Path, default=EXAMPLE / "mauna_kea_srtm3.tif")
    parser.add_argument("--labels", type=Path, default=EXAMPLE / "mauna_kea_cones.geojson")
    parser.add_argument("--heldout", type=Path, help="a seed folder of bench.recipe_folds (see above)")
    parser.add_argument("--cones", type=Path, help="an existing cone layer (default: run the shipped model)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "mauna_kea_cones.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cinderseg-figure-") as scratch:
        if args.heldout:
            cones, what = (
                heldout_cones(args.heldout, Path(scratch)),
                "each quarter by the recipe trained without it",
            )
        elif args.cones:
            cones, what = args.cones, args.cones.name
        else:
            cones, what = run_shipped_model(args.dem, Path(scratch)), "the shipped model (trained on it)"
        outcome = match(args.labels, cones)
    shade, extent = shaded_relief(args.dem, outcome.found.crs)
    save_small_png(draw(outcome, shade, extent, what), args.out)
    s, n_true, n_pred = outcome.scores(), outcome.n_true, outcome.n_pred
    print(
        f"{args.out}: {len(outcome.found)} of {n_true} labelled cones found, {len(outcome.missed)} missed; "
        f"{len(outcome.unmatched)} of {n_pred} mapped cones match no label; precision {s['precision']:.3f}, "
        f"recall {s['recall']:.3f}, F1 {s['f1']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
