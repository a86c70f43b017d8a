"""Figures written by the command line (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_2d(path, data: np.ndarray, samples: np.ndarray, log_density, title: str = "", grid: int = 200) -> Path:
    """Three panels — data, model samples, model density — on one shared square window.

    ``log_density(points (m, 2)) -> (m,)`` evaluates the model on a ``grid × grid`` grid;
    ``None`` (a model without a density, e.g. data-to-data transport) leaves that panel out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = float(np.quantile(np.abs(data), 0.995)) * 1.15
    bins = np.linspace(-lim, lim, 150)
    fig, axes = plt.subplots(1, 3 if log_density is not None else 2, figsize=(12 if log_density is not None else 8, 4))
    axes[0].hist2d(data[:, 0], data[:, 1], bins=bins, cmap="viridis")
    axes[0].set_title("data")
    axes[1].hist2d(samples[:, 0], samples[:, 1], bins=bins, cmap="viridis")
    axes[1].set_title("model samples")
    if log_density is not None:
        g = np.linspace(-lim, lim, grid)
        xx, yy = np.meshgrid(g, g)
        dens = np.exp(np.asarray(log_density(np.stack([xx.ravel(), yy.ravel()], 1)))).reshape(xx.shape)
        axes[2].imshow(dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
        axes[2].set_title("model density")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_images(path, images: np.ndarray, side: int, title: str = "") -> Path:
    """A grid of ``side × side`` grey images from ``images`` ``(n, side*side)`` in ``[0, 1]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows))
    for ax, img in zip(np.ravel(axes), images):
        ax.imshow(np.clip(img.reshape(side, side), 0, 1), cmap="gray", vmin=0, vmax=1)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
