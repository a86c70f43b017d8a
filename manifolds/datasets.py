"""Data on manifolds: the four earth-event sets on S² (shipped with the package) and synthetic
SO(3) mixtures with exact densities.

Earth events (Mathieu & Nickel 2020; used by Rozen et al. 2021, De Bortoli et al. 2022, Chen &
Lipman 2024): volcanic eruptions and earthquakes (NOAA NGDC), floods (Dartmouth Flood
Observatory), wildfires (NASA FIRMS); each CSV's first line names its source. The literature's
protocol is a random 80/10/10 split per seed; the uniform density on S² scores log 4π ≈ 2.531.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .sphere import Sphere

EARTH = {"volcano": "volerup.csv", "earthquake": "quakes_all.csv", "flood": "flood.csv", "fire": "fire.csv"}
EARTH_ROWS = {"volcano": 827, "earthquake": 6120, "flood": 4875, "fire": 12809}


@dataclass
class ManifoldDataset:
    """Splits as points of the manifold's embedding: ``(n, *manifold.shape)`` float32."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    manifold: object


def read_lat_lon(path) -> np.ndarray:
    """``(n, 2)`` latitude/longitude in degrees from a CSV; ``#`` comments and a header skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"earth data file {path} does not exist")
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        try:
            lat, lon = (float(v) for v in line.split(",")[:2])
        except ValueError:
            continue  # the header line
        rows.append((lat, lon))
    x = np.asarray(rows, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{path} holds no latitude,longitude rows")
    if np.abs(x[:, 0]).max() > 90 or np.abs(x[:, 1]).max() > 360:
        raise ValueError(f"{path}: latitudes must be in [-90, 90] and longitudes in [-180, 360] degrees")
    return x


def load_earth(name: str, seed: int = 0, path=None) -> ManifoldDataset:
    """An earth-event set on S² with the random 80/10/10 split of ``seed``. ``path`` reads a
    local CSV of ``lat,lon`` rows instead of the shipped copy."""
    if name not in EARTH:
        raise ValueError(f"unknown earth data set {name!r}; expected one of {', '.join(EARTH)}")
    if path is None:
        path = resources.files("manifolds") / "data" / EARTH[name]
    lat_lon = read_lat_lon(path)
    x = np.asarray(Sphere.from_lat_lon(lat_lon), np.float32)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_train, n_val = int(0.8 * len(x)), int(0.1 * len(x))
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    return ManifoldDataset(name, x[tr], x[va], x[te], Sphere(2))


def torus_checkerboard(n: int, seed: int = 0, squares: int = 2) -> np.ndarray:
    """``(n, 2)`` angles uniform on the dark squares of a ``squares × squares`` checkerboard on T²;
    its exact log-density is ``−log(2π²)`` there (half the torus' area ``4π²``)."""
    rng = np.random.default_rng(seed)
    cell = 2 * np.pi / squares
    i = rng.integers(squares, size=n)
    j = 2 * rng.integers(squares // 2, size=n) + (i % 2)  # dark squares: i + j even
    return ((np.stack([i, j], 1) + rng.random((n, 2))) * cell).astype(np.float32)


def torus_checkerboard_log_prob(x, squares: int = 2) -> np.ndarray:
    """Exact log-density of :func:`torus_checkerboard` (``−inf`` on light squares)."""
    ij = np.floor(np.mod(x, 2 * np.pi) / (2 * np.pi / squares)).astype(int)
    dark = (ij.sum(-1) % 2) == 0
    return np.where(dark, -np.log(2 * np.pi**2), -np.inf)
