"""Saving and loading models and training checkpoints as data only: nothing in a file runs.

A file is a NumPy ``.npz`` archive (read with ``allow_pickle=False``) holding
- ``structure``: JSON describing the pytree — for each Equinox module, dataclass or named tuple
  its class path and fields (static hyper-parameters inline, arrays by reference), for each
  function its import path — plus the format version;
- ``leaf_0``, ``leaf_1``, …: the arrays, whose shapes and dtypes the structure records too.

``load`` rebuilds the tree the way Equinox unflattens one (``object.__new__`` and the fields; no
constructor runs) and resolves classes and functions only inside :data:`ALLOWED_CLASS_PREFIXES`
and :data:`ALLOWED_FUNCTION_PREFIXES`: a foreign name, a truncated file, or an array that
disagrees with its recorded shape is refused with one clear line. When a class of this library
changes its fields, declare a migration with :func:`register_migration` so older files keep
loading.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "geoflow-npz"
FORMAT_VERSION = 2

# classes a file may name: this library's, and the Equinox, diffrax and optax pieces it builds on
ALLOWED_CLASS_PREFIXES = ("geoflow.", "manifolds.", "discrete.", "molecules.", "equinox.", "diffrax.", "optax.")
# functions a file may name (activations and the like): referenced by the model, never called on load
ALLOWED_FUNCTION_PREFIXES = ("geoflow.", "manifolds.", "discrete.", "molecules.", "jax.nn", "jax._src.nn.",
                             "jax.numpy", "jax._src.numpy.", "equinox.")

# class path -> migrations (fields dict -> fields dict), applied in order when a file's fields
# differ from the class's; and old class paths -> new ones
MIGRATIONS: dict[str, list[Callable[[dict], dict]]] = {}
RENAMED_CLASSES: dict[str, str] = {}
# a third-party type stored by a codec: type -> (name, encode, decode); name -> (module, decode)
_CODECS: dict[type, tuple[str, Callable, Callable]] = {}
_DECODERS: dict[str, tuple[str, Callable]] = {}


class SerializationError(ValueError):
    """A file that cannot be (or a tree that cannot be) stored as data only."""


def register_migration(class_path: str, migrate: Callable[[dict], dict], *, renamed_from: str | None = None):
    """Declare how fields saved by an older layout of ``class_path`` map to today's:
    ``migrate(fields) -> fields`` with field names as keys (values already decoded). With
    ``renamed_from``, files naming the old class path load as ``class_path``."""
    MIGRATIONS.setdefault(class_path, []).append(migrate)
    if renamed_from is not None:
        RENAMED_CLASSES[renamed_from] = class_path


def register_codec(cls: type, name: str, encode: Callable, decode: Callable):
    """Store instances of a third-party ``cls`` (outside the allow-list) as data: ``encode(obj)``
    returns a tree of plain values and arrays, ``decode(tree)`` rebuilds the object. Call it at
    import time of the module that uses ``cls``; files record that module so ``load`` can import
    it (inside the allow-list) before decoding."""
    module = encode.__module__
    _CODECS[cls] = (name, encode, decode)
    _DECODERS[name] = (module, decode)


def _path_of(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


# ---- writing ------------------------------------------------------------------------------------

class _Encoder:
    def __init__(self):
        self.leaves: list[np.ndarray] = []

    def array(self, a) -> dict:
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return {"key": self.array(jax.random.key_data(a)), "impl": str(jax.random.key_impl(a))}
        a = np.asarray(a)
        node = {"array": len(self.leaves), "shape": list(a.shape), "dtype": str(a.dtype)}
        if a.dtype.kind not in "biufc":  # bfloat16 and friends: stored as raw bits
            a = a.view(f"u{a.dtype.itemsize}")
        self.leaves.append(a)
        return node

    def __call__(self, obj):
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"float": repr(obj)}
        if isinstance(obj, (jax.Array, np.ndarray, np.generic)):
            return self.array(obj)
        if type(obj) in _CODECS:
            name, encode, _ = _CODECS[type(obj)]
            return {"codec": name, "module": _DECODERS[name][0], "data": self(encode(obj))}
        if isinstance(obj, eqx.Module) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
            fields = {f.name: self(getattr(obj, f.name)) for f in dataclasses.fields(obj) if hasattr(obj, f.name)}
            return {"class": _path_of(type(obj)), "fields": fields}
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple (optax states)
            return {"namedtuple": _path_of(type(obj)), "items": [self(v) for v in obj]}
        if isinstance(obj, tuple):
            return {"tuple": [self(v) for v in obj]}
        if isinstance(obj, list):
            return {"list": [self(v) for v in obj]}
        if isinstance(obj, dict):
            if not all(isinstance(k, str) for k in obj):
                raise SerializationError("only dicts with string keys can be saved")
            return {"dict": {k: self(v) for k, v in obj.items()}}
        if isinstance(obj, type):
            return {"type": _path_of(obj)}
        if callable(obj) and hasattr(obj, "__module__") and hasattr(obj, "__qualname__"):
            path = _path_of(obj)
            if "<lambda>" in path or "<locals>" in path or _resolve(path, ALLOWED_FUNCTION_PREFIXES, "function") is not obj:
                raise SerializationError(f"cannot save the function {path}: only named functions of "
                                         f"{', '.join(ALLOWED_FUNCTION_PREFIXES)} are stored (by name)")
            return {"function": path}
        raise SerializationError(f"cannot save an object of type {type(obj).__name__}: geoflow files hold only "
                                 "arrays, numbers, strings, containers, and this library's modules")


def save(path, tree) -> Path:
    """Write ``tree`` (a model, or a dict of models, optimizer state, history, …) to ``path``
    atomically, as data only (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from . import __version__

    encoder = _Encoder()
    structure = {"format": FORMAT, "format_version": FORMAT_VERSION, "geoflow": __version__, "tree": encoder(tree)}
    arrays = {f"leaf_{i}": a for i, a in enumerate(encoder.leaves)}
    arrays["structure"] = np.frombuffer(json.dumps(structure).encode(), dtype=np.uint8)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


# ---- reading ------------------------------------------------------------------------------------

def _resolve(path: str, prefixes: tuple[str, ...], kind: str):
    """The object at ``module.qualname``, importing only modules under ``prefixes``."""
    if not isinstance(path, str) or not path.startswith(prefixes):
        raise SerializationError(f"the file names the {kind} {path!r}, outside this library's allow-list "
                                 f"({', '.join(prefixes)}); refusing to load it")
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        module_name = ".".join(parts[:i])
        if not module_name.startswith(prefixes) and not any(p.startswith(module_name + ".") for p in prefixes):
            break
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            break
        return obj
    raise SerializationError(f"the file names the {kind} {path!r}, which this version of the library does not have")


def classes_in(tree) -> set[type]:
    """The Equinox module and dataclass types inside ``tree``: what a caller that built the
    tree itself (``fit`` resuming a run of the model it was given) may trust in a file."""
    found: set[type] = set()

    def walk(obj):
        if isinstance(obj, eqx.Module) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
            found.add(type(obj))
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name, None))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)

    walk(tree)
    return found


class _Decoder:
    def __init__(self, leaves: dict[str, np.ndarray], trust: set[type]):
        self.leaves = leaves
        self.trusted = {_path_of(cls): cls for cls in trust}

    def array(self, node):
        name = f"leaf_{node['array']}"
        if name not in self.leaves:
            raise SerializationError(f"the file's structure refers to array {name}, which it does not contain")
        a = self.leaves[name]
        dtype = np.dtype(node["dtype"]) if node["dtype"] != "bfloat16" else jnp.bfloat16
        if a.dtype != dtype:
            a = a.view(dtype) if a.dtype.kind == "u" and a.dtype.itemsize == np.dtype(dtype).itemsize else a
        if list(a.shape) != list(node["shape"]) or a.dtype != dtype:
            raise SerializationError(f"array {name} has shape {a.shape} and dtype {a.dtype}; the structure "
                                     f"records {tuple(node['shape'])} and {node['dtype']}")
        return jnp.asarray(a)

    def __call__(self, node):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, dict):
            if "array" in node:
                return self.array(node)
            if "key" in node:
                return jax.random.wrap_key_data(self(node["key"]), impl=node["impl"])
            if "float" in node:
                return float(node["float"])
            if "tuple" in node:
                return tuple(self(v) for v in node["tuple"])
            if "list" in node:
                return [self(v) for v in node["list"]]
            if "dict" in node:
                return {k: self(v) for k, v in node["dict"].items()}
            if "class" in node:
                return self.instance(node["class"], {k: self(v) for k, v in node["fields"].items()})
            if "namedtuple" in node:
                cls = _resolve(node["namedtuple"], ALLOWED_CLASS_PREFIXES, "class")
                if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
                    raise SerializationError(f"{node['namedtuple']} is not a named tuple")
                return cls(*(self(v) for v in node["items"]))
            if "type" in node:
                return _resolve(node["type"], ALLOWED_CLASS_PREFIXES, "class")
            if "function" in node:
                return _resolve(node["function"], ALLOWED_FUNCTION_PREFIXES, "function")
            if "codec" in node:
                if node["codec"] not in _DECODERS:
                    _resolve(node["module"] + ".__name__", ALLOWED_CLASS_PREFIXES, "module")  # registers it
                if node["codec"] not in _DECODERS:
                    raise SerializationError(f"the file stores a {node['codec']!r}, which no module registers")
                return _DECODERS[node["codec"]][1](self(node["data"]))
        raise SerializationError(f"unreadable entry in the file's structure: {str(node)[:80]}")

    def instance(self, class_path: str, fields: dict):
        class_path = RENAMED_CLASSES.get(class_path, class_path)
        cls = self.trusted.get(class_path) or _resolve(class_path, ALLOWED_CLASS_PREFIXES, "class")
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise SerializationError(f"{class_path} is not an Equinox module or dataclass")
        expected = {f.name for f in dataclasses.fields(cls)}
        for migrate in MIGRATIONS.get(class_path, []) if set(fields) != expected else []:
            fields = migrate(dict(fields))
        if not set(fields) <= expected:
            raise SerializationError(f"the file's {class_path} has fields {sorted(fields)}, the class has "
                                     f"{sorted(expected)}; declare a migration (geoflow.serialization."
                                     "register_migration) for files of the older layout")
        obj = object.__new__(cls)  # as Equinox unflattens: no constructor runs
        for name, value in fields.items():
            object.__setattr__(obj, name, value)
        return obj


def load(path, *, trust=()):
    """Read what :func:`save` wrote; arrays come back as JAX arrays. Nothing in the file is
    executed: a pickle, a foreign class name or a damaged file is a :class:`SerializationError`.

    `trust`: further classes (your own Equinox modules) the file may name, e.g.
    ``load(path, trust=classes_in(my_model))``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved model at {path}; expected a file written by geoflow.save")
    with open(path, "rb") as f:
        if f.read(1) == b"\x80":
            raise SerializationError(f"{path} is a pickle (the format of geoflow files before format 2); it is "
                                     "refused because unpickling can run code: re-save the model with this version")
    try:
        with np.load(path, allow_pickle=False) as archive:
            leaves = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise SerializationError(f"{path} is not a geoflow save file, or it is damaged ({type(e).__name__}: {e})") from None
    try:
        structure = json.loads(bytes(leaves.pop("structure")).decode())
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
        raise SerializationError(f"{path} has no readable structure record; not a geoflow save file") from None
    if not isinstance(structure, dict) or structure.get("format") != FORMAT:
        raise SerializationError(f"{path} is not a geoflow save file (expected format {FORMAT})")
    if structure.get("format_version", 0) > FORMAT_VERSION:
        raise SerializationError(f"{path} was written by a newer geoflow (format {structure['format_version']}; "
                                 f"this one reads up to {FORMAT_VERSION})")
    return _Decoder(leaves, set(trust))(structure["tree"])

