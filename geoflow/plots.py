"""Figures written by the command line (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(fig, path, title: str, dpi: int = 100) -> Path:
    """Title, tight layout, write, close: the last steps of every figure here."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_2d(path, data: np.ndarray, samples: np.ndarray, log_density, title: str = "", grid: int = 200,
            bounds: tuple[float, float] | None = None) -> Path:
    """Three panels — data, model samples, model density — on one shared square window.

    ``log_density(points (m, 2)) -> (m,)`` evaluates the model on a ``grid × grid`` grid;
    ``None`` (a model without a density, e.g. data-to-data transport) leaves that panel out.
    ``bounds = (lo, hi)`` fixes the window (``(0, 2π)`` for the torus); by default it is
    symmetric about 0 and holds 99.5% of the data.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if bounds is None:
        lim = float(np.quantile(np.abs(data), 0.995)) * 1.15
        bounds = (-lim, lim)
    lo, hi = bounds
    bins = np.linspace(lo, hi, 150)
    fig, axes = plt.subplots(1, 3 if log_density is not None else 2, figsize=(12 if log_density is not None else 8, 4))
    axes[0].hist2d(data[:, 0], data[:, 1], bins=bins, cmap="viridis")
    axes[0].set_title("data")
    axes[1].hist2d(samples[:, 0], samples[:, 1], bins=bins, cmap="viridis")
    axes[1].set_title("model samples")
    if log_density is not None:
        g = np.linspace(lo, hi, grid)
        xx, yy = np.meshgrid(g, g)
        dens = np.exp(np.asarray(log_density(np.stack([xx.ravel(), yy.ravel()], 1)))).reshape(xx.shape)
        axes[2].imshow(dens, origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
        axes[2].set_title("model density")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path, title)


def so3_axis_and_angle(rotations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a rotation sends the x axis, as ``(n, 2)`` latitude/longitude in degrees, and how
    far it turns about that axis, in radians: the implicit-PDF picture of SO(3) (Murphy et al.
    2021) — a sphere of directions with a colour wheel for the third angle."""
    r = np.asarray(rotations, np.float64).reshape(-1, 3, 3)
    a, b = r[:, :, 0], r[:, :, 1]
    ref = np.where(np.abs(a[:, 2:3]) < 0.99, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    ref = ref - np.sum(ref * a, 1, keepdims=True) * a
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    tilt = np.arctan2(np.sum(b * np.cross(a, ref), 1), np.sum(b * ref, 1))
    lat_lon = np.degrees(np.stack([np.arcsin(np.clip(a[:, 2], -1, 1)), np.arctan2(a[:, 1], a[:, 0])], 1))
    return lat_lon, tilt


def plot_so3(path, data: np.ndarray, samples: np.ndarray, title: str = "") -> Path:
    """Rotations ``(n, 3, 3)`` of the data and of the model, each as :func:`so3_axis_and_angle`:
    a point per rotation on a world map of the x axis' image, coloured by the turn about it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for ax, rot, name in ((axes[0], data, "data"), (axes[1], samples, "model samples")):
        lat_lon, tilt = so3_axis_and_angle(rot)
        ax.scatter(lat_lon[:, 1], lat_lon[:, 0], c=tilt, cmap="hsv", vmin=-np.pi, vmax=np.pi, s=2, alpha=0.6)
        ax.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="longitude of R·x̂", title=name)
    axes[0].set_ylabel("latitude of R·x̂")
    return _save(fig, path, title)


def plot_images(path, images: np.ndarray, side: int | None = None, title: str = "") -> Path:
    """A grid of grey images in ``[0, 1]``: ``images`` ``(n, h, w)`` or ``(n, 1, h, w)``, or
    flattened ``(n, side*side)`` with ``side`` given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    if side is not None:
        images = images.reshape(len(images), side, side)
    elif images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"plot_images expects grey images (n, h, w) or (n, 1, h, w); got {images.shape}")
    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows))
    for ax, img in zip(np.ravel(axes), images):
        ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_sphere(path, data_lat_lon: np.ndarray, samples_lat_lon: np.ndarray, log_density=None,
                title: str = "", grid: int = 120) -> Path:
    """Data, samples and (optionally) the density on S² in an equirectangular world projection.

    Points are ``(n, 2)`` latitude/longitude in degrees; ``log_density(lat_lon (m, 2)) -> (m,)``
    is evaluated on a ``grid × 2·grid`` latitude/longitude grid, with the data drawn over it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if log_density is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.4))
    for ax, pts, name in ((axes[0], data_lat_lon, "data"), (axes[1], samples_lat_lon, "model samples")):
        ax.scatter(pts[:, 1], pts[:, 0], s=1, alpha=0.5)
        ax.set_title(name)
    if log_density is not None:
        lat, lon = np.linspace(-90, 90, grid), np.linspace(-180, 180, 2 * grid)
        ll = np.stack(np.meshgrid(lat, lon, indexing="ij"), -1).reshape(-1, 2)
        dens = np.exp(np.asarray(log_density(ll))).reshape(grid, 2 * grid)
        axes[2].imshow(dens, origin="lower", extent=(-180, 180, -90, 90), cmap="viridis", aspect="auto")
        axes[2].scatter(data_lat_lon[:, 1], data_lat_lon[:, 0], s=0.5, c="white", alpha=0.3)
        axes[2].set_title("model density")
    for ax in axes:
        ax.set_xlim(-180, 180)
        ax.set_ylim(-90, 90)
        ax.set_xlabel("longitude")
    axes[0].set_ylabel("latitude")
    return _save(fig, path, title)
