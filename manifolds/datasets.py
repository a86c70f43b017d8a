"""Data on manifolds: the four earth-event sets on S² (shipped with the package), and synthetic
sets with exact densities — a checkerboard on T² and mixtures of wrapped normals on SO(3).

Earth events (Mathieu & Nickel 2020; used by Rozen et al. 2021, De Bortoli et al. 2022, Chen &
Lipman 2024): volcanic eruptions and earthquakes (NOAA NGDC), floods (Dartmouth Flood
Observatory), wildfires (NASA FIRMS); each CSV's first line names its source. The literature's
protocol is a random 80/10/10 split per seed; the uniform density on S² scores log 4π ≈ 2.531.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import numpy as np

from geoflow.datasets import Dataset, random_split

from .sphere import Sphere

EARTH = {"volcano": "volerup.csv", "earthquake": "quakes_all.csv", "flood": "flood.csv", "fire": "fire.csv"}
EARTH_ROWS = {"volcano": 827, "earthquake": 6120, "flood": 4875, "fire": 12809}


@dataclasses.dataclass(frozen=True)
class ManifoldDataset(Dataset):
    """Splits as points of the manifold's embedding, ``(n, *manifold.shape)`` float32, and the
    manifold (a :class:`geoflow.datasets.Dataset` with ``manifold=``)."""

    manifold: object = dataclasses.field(default=None, kw_only=True)


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
    return ManifoldDataset(name, *random_split(x, seed), manifold=Sphere(2))


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


def load_torus_checkerboard(seed: int = 0, n_train: int = 20_000, n_val: int = 2_000, n_test: int = 5_000,
                            squares: int = 2) -> ManifoldDataset:
    """:func:`torus_checkerboard` splits drawn independently (true NLL ``log 2π² ≈ 2.98``)."""
    from .euclidean import Torus

    x = torus_checkerboard(n_train + n_val + n_test, seed, squares)
    return ManifoldDataset("torus-checkerboard", x[:n_train], x[n_train : n_train + n_val], x[n_train + n_val :],
                           true_log_prob=lambda p: torus_checkerboard_log_prob(np.asarray(p), squares), manifold=Torus(2))


def load_so3_mixture(k: int = 16, seed: int = 0, n_train: int = 100_000, n_val: int = 2_000,
                     n_test: int = 5_000) -> ManifoldDataset:
    """De Bortoli et al.'s mixture of ``k`` wrapped normals on SO(3) (:meth:`WrappedNormalMixtureSO3.random`)
    for ``seed``, with independent train/val/test draws; ``true_log_prob`` is its exact density."""
    import jax

    from .distributions import WrappedNormalMixtureSO3
    from .so3 import SO3

    key = jax.random.key(seed)
    truth = WrappedNormalMixtureSO3.random(jax.random.fold_in(key, k), k)
    draw = lambda i, n: np.asarray(truth.sample(jax.random.fold_in(key, i), n))
    return ManifoldDataset(f"so3-mixture{k}", draw(1, n_train), draw(2, n_val), draw(3, n_test),
                           true_log_prob=lambda p: np.asarray(truth.log_prob(p)), manifold=SO3())


# every built-in set by name, for the command line: name → loader(seed) → ManifoldDataset
BUILT_IN = {**{name: (lambda s, name=name: load_earth(name, s)) for name in EARTH},
            "torus-checkerboard": lambda s: load_torus_checkerboard(s),
            "so3-mixture": lambda s: load_so3_mixture(16, s)}
