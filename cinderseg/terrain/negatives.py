"""Landforms that a blob detector takes for cones but that are not: hard negatives for training.

Hill country (dissected ridges and rounded knobs), coasts with sea cliffs, headlands and stacks,
maars and tuff rings (vents without a cone), fault scarps and dyke ridges, lava-flow lobes. Every
function takes a grid shape (rows, cols), the pixel size ``res`` in metres and a numpy Generator (or
explicit sizes), and returns float32 heights in metres; rows run south, columns east. Used by the
composite training scenes (:mod:`cinderseg.data.scenes`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
from scipy import ndimage

_F32 = np.float32


def fbm(
    shape: tuple[int, int],
    res: float,
    rng: np.random.Generator,
    *,
    std_m: float,
    beta: float = 3.0,
    corner_m: float = 5000.0,
    aniso: float = 1.0,
    azimuth: float = 0.0,
) -> np.ndarray:
    """Fractal (power-law spectrum) noise with standard deviation ``std_m`` metres.

    ``beta``: spectral exponent of the power spectrum (3: Brownian-like terrain); ``corner_m``: the
    wavelength above which the spectrum flattens; ``aniso`` > 1 stretches features along ``azimuth``
    (radians, clockwise from north).
    """
    h, w = shape
    spec = scipy.fft.rfft2(rng.standard_normal((h, w)).astype(_F32))
    ky = scipy.fft.fftfreq(h, d=res).astype(_F32)[:, None]
    kx = scipy.fft.rfftfreq(w, d=res).astype(_F32)[None, :]
    ca, sa = math.cos(azimuth), math.sin(azimuth)
    k_par = kx * sa - ky * ca
    k_perp = kx * ca + ky * sa
    k2 = (aniso * k_par) ** 2 + k_perp**2 + _F32(1.0 / corner_m) ** 2
    filt = np.power(k2, _F32(-beta / 4.0))
    filt[0, 0] = 0.0
    z = scipy.fft.irfft2(spec * filt, s=(h, w)).astype(_F32)
    z -= z.mean()
    return z * _F32(std_m / max(float(z.std()), 1e-9))


def hill_country(shape: tuple[int, int], res: float, rng: np.random.Generator) -> np.ndarray:
    """Dissected hills and ridges: ridged fractal relief of 60-400 m, valleys cut along the lows.

    Ridged noise (1 - |n|) gives sharp-crested ridges and rounded knobs, the kind of hill country
    whose summits a blob detector takes for cones.
    """
    relief = rng.uniform(60.0, 400.0)
    wavelength = rng.uniform(1500.0, 6000.0)
    n = fbm(
        shape,
        res,
        rng,
        std_m=1.0,
        beta=rng.uniform(3.6, 4.4),
        corner_m=wavelength,
        aniso=rng.uniform(1.0, 3.0),
        azimuth=rng.uniform(0, math.pi),
    )
    ridged = np.clip(1.0 - np.abs(n) / max(float(np.abs(n).max()), 1e-6), 0.0, 1.0)
    ridged = ridged ** rng.uniform(1.0, 2.5)
    z = ridged * relief
    z += fbm(shape, res, rng, std_m=relief * 0.25, beta=4.0, corner_m=20000.0)
    z += fbm(shape, res, rng, std_m=relief * 0.02, beta=3.0, corner_m=1000.0)
    # smooth at the scale of a few pixels: soil-mantled hillslopes are convex
    z = ndimage.gaussian_filter(z, sigma=max(0.5, rng.uniform(60.0, 200.0) / res))
    return z.astype(_F32)


def coast(shape: tuple[int, int], res: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A coastline with sea cliffs: land rising inland, a cliff of 15-150 m at a wavy shoreline with
    headlands and sea stacks, the sea flat at 0 m. Returns (z, sea) with ``sea`` True over water."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(_F32)
    theta = rng.uniform(0, 2 * math.pi)
    # signed distance (m) from a straight shoreline, perturbed by fractal wiggles into bays and headlands
    d = ((xx - w / 2) * math.cos(theta) + (yy - h / 2) * math.sin(theta)) * res
    d += rng.uniform(-0.3, 0.3) * min(h, w) * res
    d += fbm(
        shape, res, rng, std_m=rng.uniform(300.0, 1500.0), beta=4.0, corner_m=rng.uniform(2000.0, 8000.0)
    )
    land = d > 0
    cliff = rng.uniform(15.0, 150.0)
    inland = fbm(shape, res, rng, std_m=rng.uniform(10.0, 80.0), beta=4.0, corner_m=4000.0)
    inland += fbm(shape, res, rng, std_m=2.0, beta=3.0, corner_m=1000.0)
    z = cliff + np.clip(d, 0, None) * rng.uniform(0.002, 0.03) + inland - inland.min() * 0.3
    # the cliff face: a steep drop over 1-3 pixels at the shoreline, a narrow beach or platform below
    width = rng.uniform(1.0, 3.0) * res
    face = np.clip(d / width, 0.0, 1.0)
    z = z * face
    # sea stacks: small steep-sided pillars just offshore
    sea = ~land
    for _ in range(rng.integers(0, 6)):
        cand = np.argwhere(sea & (d > -400.0))
        if len(cand) == 0:
            break
        r0, c0 = cand[rng.integers(len(cand))]
        rad = rng.uniform(40.0, 150.0) / res
        dist = np.hypot(yy - r0, xx - c0)
        stack = np.clip(1.0 - dist / max(rad, 0.5), 0, 1) ** 0.3 * rng.uniform(10.0, 60.0)
        z = np.maximum(z, stack)
    sea = z <= 0.0
    z = np.where(sea, 0.0, z)
    return z.astype(_F32), sea


def maar(
    shape: tuple[int, int],
    res: float,
    centre: tuple[float, float],
    diameter_m: float,
    depth_m: float,
    rim_m: float,
) -> np.ndarray:
    """A maar or tuff ring: a crater cut below the surroundings with a low, broad rim (a vent that is
    not a cone). Relief (m) to add to a surface."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(_F32)
    rho = np.hypot(yy - centre[0], xx - centre[1]) * res / (diameter_m / 2)
    bowl = -depth_m * np.clip(1.0 - rho**2, 0, None)
    rim = rim_m * np.exp(-(((rho - 1.15) / 0.45) ** 2))
    return (bowl + rim).astype(_F32)


def scarp(shape: tuple[int, int], res: float, rng: np.random.Generator) -> np.ndarray:
    """A fault scarp or dyke ridge: a straight to gently curved step (or ridge) 10-120 m high."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(_F32)
    theta = rng.uniform(0, math.pi)
    d = ((xx - rng.uniform(0, w)) * math.cos(theta) + (yy - rng.uniform(0, h)) * math.sin(theta)) * res
    d += fbm(shape, res, rng, std_m=rng.uniform(50.0, 400.0), beta=4.2, corner_m=6000.0)
    height = rng.uniform(10.0, 120.0)
    width = rng.uniform(60.0, 300.0)
    if rng.random() < 0.5:
        return (height * 0.5 * (1 + np.tanh(d / (width / 2)))).astype(_F32)  # a step
    return (height * np.exp(-((d / width) ** 2))).astype(_F32)  # a ridge


def lava_lobes(shape: tuple[int, int], res: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """Lava-flow lobes: elongated tongues 5-40 m thick with steep fronts and rounded snouts."""
    h, w = shape
    out = np.zeros(shape, _F32)
    yy, xx = np.mgrid[:h, :w].astype(_F32)
    for _ in range(n):
        theta = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(1000.0, 6000.0) / res
        width = rng.uniform(150.0, 700.0) / res
        r0, c0 = rng.uniform(0, h), rng.uniform(0, w)
        u = (xx - c0) * math.cos(theta) + (yy - r0) * math.sin(theta)
        v = -(xx - c0) * math.sin(theta) + (yy - r0) * math.cos(theta)
        wig = np.sin(u / max(length / rng.uniform(1, 4), 1) + rng.uniform(0, 6)) * width * 0.5
        inside = (
            (u > 0)
            & (u < length)
            & (np.abs(v - wig) < width * np.sqrt(np.clip(1 - (u / length) ** 6, 0, None)))
        )
        thick = rng.uniform(5.0, 40.0)
        lobe = ndimage.gaussian_filter(inside.astype(_F32), sigma=max(0.6, 30.0 / res)) * thick
        out = np.maximum(out, lobe)
    return out
