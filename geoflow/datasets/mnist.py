"""MNIST: download with checksums into a cache, or load from a local ``.npz`` file or IDX folder.

The four IDX files are checked against the sha256 of the original (uncompressed) files, so a
corrupt or foreign download fails loudly. Nothing is downloaded unless asked
(``download=True``); tests and benchmarks point :func:`load_mnist` at a local copy.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
from pathlib import Path

import numpy as np

from .locations import shared_data

# the mirror TensorFlow and PyTorch use (the original host at yann.lecun.com is often offline)
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_FILES = {  # array name → (IDX file name, sha256 of the uncompressed file)
    "x_train": ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "y_train": ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "x_test": ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "y_test": ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}


def default_cache_dir() -> Path:
    """``$GEOFLOW_CACHE/mnist``, by default ``~/.cache/geoflow/mnist``."""
    return Path(os.environ.get("GEOFLOW_CACHE", Path.home() / ".cache" / "geoflow")) / "mnist"


def encode_idx(array: np.ndarray) -> bytes:
    """An unsigned-byte array as an IDX file (big-endian magic and dimensions, then the bytes)."""
    array = np.asarray(array, np.uint8)
    return struct.pack(f">I{array.ndim}I", 0x800 + array.ndim, *array.shape) + array.tobytes()


def decode_idx(raw: bytes, name: str = "IDX data") -> np.ndarray:
    """The array an unsigned-byte IDX file holds."""
    if len(raw) < 4:
        raise ValueError(f"{name} is too short to be an IDX file")
    magic = struct.unpack(">I", raw[:4])[0]
    ndim = magic - 0x800
    if not 1 <= ndim <= 4:
        raise ValueError(f"{name} has IDX magic {magic:#x}; expected an unsigned-byte array (0x801–0x804)")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{name} holds {data.size} bytes of data; its header says {shape}")
    return data.reshape(shape)


def _checked(raw: bytes, key: str, source) -> bytes:
    file, expected = MNIST_FILES[key]
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise ValueError(f"{source}: sha256 {actual} does not match the original {file} ({expected}); "
                         "the file is corrupt or not MNIST")
    return raw


def _read_folder(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, (file, _) in MNIST_FILES.items():
        plain, packed = folder / file, folder / (file + ".gz")
        if plain.is_file():
            raw = plain.read_bytes()
        elif packed.is_file():
            raw = gzip.decompress(packed.read_bytes())
        else:
            raise FileNotFoundError(f"{folder} has neither {file} nor {file}.gz")
        arrays[key] = decode_idx(_checked(raw, key, plain), file)
    return arrays


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        missing = [k for k in MNIST_FILES if k not in data.files]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}; expected the arrays {', '.join(MNIST_FILES)}")
        arrays = {k: np.asarray(data[k]) for k in MNIST_FILES}
    for key, arr in arrays.items():
        if arr.shape != SHAPES[key]:
            raise ValueError(f"{path}: {key} has shape {arr.shape}; MNIST's is {SHAPES[key]}")
        _checked(encode_idx(arr), key, f"{path}[{key}]")  # the same bytes as the original IDX file
    return arrays


def download_mnist(cache_dir: str | Path | None = None, base_url: str = MNIST_URL) -> Path:
    """Fetch the four gzipped IDX files from ``base_url``, check each against its sha256 and store
    it uncompressed in ``cache_dir`` (default :func:`default_cache_dir`); files already there and
    intact are kept. Returns the folder."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for key, (file, expected) in MNIST_FILES.items():
        target = folder / file
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == expected:
            continue
        url = base_url.rstrip("/") + "/" + file + ".gz"
        with urllib.request.urlopen(url, timeout=60) as response:
            raw = _checked(gzip.decompress(response.read()), key, url)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(raw)
        tmp.replace(target)
    return folder


def load_mnist(path: str | Path | None = None, *, cache_dir: str | Path | None = None,
               download: bool = False) -> dict[str, np.ndarray]:
    """MNIST as ``{"x_train": (60000, 28, 28), "y_train", "x_test": (10000, 28, 28), "y_test"}`` uint8.

    **Arguments:**
    - `path`: a ``.npz`` file with those four arrays, or a folder of IDX files (plain or
      ``.gz``). Every array is checked against the original files' sha256.
    - `cache_dir`: where downloads live (default :func:`default_cache_dir`); used when
      ``path`` is ``None`` and the shared data folder
      (:func:`~geoflow.datasets.locations.shared_data`) holds no ``mnist.npz``.
    - `download`: fetch into the cache if it is empty (otherwise a missing cache is an error).
    """
    if path is not None:
        path = Path(path)
        if path.is_dir():
            return _read_folder(path)
        if path.is_file():
            return _read_npz(path)
        raise FileNotFoundError(f"MNIST path {path} does not exist; expected a .npz file or a folder of IDX files")
    if cache_dir is None and shared_data("mnist.npz").is_file():
        return _read_npz(shared_data("mnist.npz"))
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not all((folder / file).is_file() for file, _ in MNIST_FILES.values()):
        if not download:
            raise FileNotFoundError(f"MNIST is not in the cache {folder}; pass a local file or folder "
                                    "(--data-path), or allow the download")
        download_mnist(folder)
    return _read_folder(folder)
