"""What every ``geoflow`` command shares, and how a package adds its own.

**The skeleton.** A training command reads :func:`add_training_arguments`' options, opens a
:class:`TrainingRun` (keys from ``--seed``, the run directory), calls :func:`geoflow.fit` with
:func:`fit_options`, and ends with :meth:`TrainingRun.finish`: ``model.eqx``, ``run.json`` (what
the run is), ``metrics.json`` (what it measured, with :func:`training_summary`) and the printed
summary.

**Adding commands from another package.** ``geoflow.cli`` imports no package above the core by
name. It builds its parser from two entry-point groups of the installed distributions:

- ``geoflow.commands``: a module with ``add_parser(subparsers)`` (adds ``geoflow NAME …``) and
  ``run(args)``; e.g. ``molecules = "molecules.cli"`` in ``pyproject.toml``;
- ``geoflow.fit_models``: a :class:`FitModels` object adding models to ``geoflow fit --model``
  (and their ``eval``); e.g. ``rfm = "manifolds.cli:FIT_MODELS"``.

Bad input raises :class:`UsageError`, ``ValueError`` or ``FileNotFoundError``; the command
prints one line ``geoflow: error: …`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

COMMAND_GROUP = "geoflow.commands"
FIT_MODEL_GROUP = "geoflow.fit_models"


class UsageError(Exception):
    """A command line argparse refuses (printed as one line, exit status 2)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one :class:`UsageError`, not usage text and an exit."""

    def error(self, message):
        raise UsageError(message)


def choice(valid, what: str) -> Callable[[str], str]:
    """An argparse ``type`` accepting only ``valid`` names, with an error naming ``what`` was wrong."""

    def check(value):
        if value not in valid:
            raise argparse.ArgumentTypeError(f"unknown {what} {value!r}; expected one of {', '.join(valid)}")
        return value

    return check


# ---- the training skeleton -------------------------------------------------------------------


def add_training_arguments(parser, *, steps: int | None, batch_size: int, out: Path | None = None) -> None:
    """``--steps``, ``--batch-size``, ``--lr``, ``--ema``, ``--devices``, ``--skip-nonfinite``, ``--quiet``,
    ``--seed`` and ``--out``
    with this command's defaults (``out=None``: the command names the run directory;
    ``steps=None``: the command chooses, e.g. by the data's mode, when the option is not given)."""
    parser.add_argument("--steps", type=int, default=steps,
                        help="optimizer steps requested" + ("" if steps is not None else " (default: by the command's mode)"))
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, metavar="DECAY",
                        help="keep, validate and save a moving average of the parameters with this decay (e.g. 0.999)")
    parser.add_argument("--devices", type=int, default=1,
                        help="train data-parallel over this many devices, the batch split over them; on a machine "
                             "without an accelerator, the CPU's cores split into as many devices (faster for small "
                             "networks, whose single program leaves cores idle)")
    parser.add_argument("--skip-nonfinite", type=int, default=0, metavar="N",
                        help="skip up to N consecutive steps whose loss or gradient is not finite (listed in "
                             "metrics.json) instead of stopping at the first; for a long run with a rare overflow")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--seed", type=int, default=0, help="the run's one random seed")
    parser.add_argument("--out", type=Path, default=out,
                        help="run directory" + (f" (default {out})" if out is not None else ""))


def fit_options(args) -> dict:
    """The keywords of :func:`geoflow.fit` that :func:`add_training_arguments`' options set."""
    return dict(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, ema_decay=args.ema,
                devices=None if args.devices == 1 else args.devices, skip_nonfinite=args.skip_nonfinite,
                progress=not args.quiet)


def training_summary(history, args) -> dict:
    """What a training command records of a ``fit`` run with :func:`fit_options` ``(args)``: the
    steps run (and why it stopped, and which were skipped as not finite), the last losses, the
    devices, examples per second and the time spent."""
    return {"devices": args.devices, "steps": history.steps[-1] if history.steps else 0,
            "stop_reason": history.stop_reason, "skipped_steps": history.skipped_steps,
            "final_train_loss": history.train_loss[-1] if history.train_loss else None,
            "final_val_loss": history.val_loss[-1] if history.val_loss else None,
            "steps_per_second": history.steps_per_second,
            "examples_per_s": history.steps_per_second * args.batch_size, "fit_seconds": history.wall_time}


@dataclasses.dataclass
class TrainingRun:
    """One training command's run: its directory, its keys and its clock.

    ``keys(n)`` splits the key of ``--seed`` into ``n`` (model, fit, evaluation, …), so a run is a
    function of its seed; :meth:`finish` writes what every run directory holds."""

    out: Path
    seed: int
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, args, default_out: Path) -> TrainingRun:
        """The run of ``args`` (``--out`` or ``default_out``), its directory created."""
        out = args.out if args.out is not None else default_out
        out.mkdir(parents=True, exist_ok=True)
        return cls(out, args.seed)

    def keys(self, n: int):
        import jax

        return tuple(jax.random.split(jax.random.key(self.seed), n))

    def finish(self, model, info: dict, metrics: dict, *files: Path) -> dict:
        """Save ``model.eqx``; write ``run.json`` (``info`` and the seed: what ``sample``/``eval``
        need to read the run back) and ``metrics.json`` (``metrics`` and the wall time); print
        the files written (``files``: others the command wrote) and the metrics rounded. Under
        ``jax.distributed`` only process 0 writes and prints."""
        import jax

        from .serialization import save

        metrics = {**metrics, "wall_seconds": time.perf_counter() - self.started}
        if jax.process_index() != 0:  # under jax.distributed every process holds the same run
            return metrics
        save(self.out / "model.eqx", model)
        (self.out / "run.json").write_text(json.dumps({**info, "seed": self.seed}, indent=2))
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        written = [self.out / "metrics.json", self.out / "model.eqx", *(f for f in files if f.exists())]
        print("wrote " + ", ".join(str(p) for p in written))
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
        return metrics


def report(path: Path, res: dict, *also: Path) -> dict:
    """Write ``res`` as JSON to ``path`` (a command that scores rather than trains), say which
    files were written, print ``res``."""
    path.write_text(json.dumps(res, indent=2))
    print("wrote " + ", ".join(str(p) for p in (*also, path)))
    print(json.dumps(res))
    return res


def existing_run(path: Path) -> Path:
    """``path`` if it is a run directory (holds ``model.eqx``), else a clear error."""
    if not (path / "model.eqx").is_file():
        raise FileNotFoundError(f"run directory {path} has no model.eqx; expected the --out of a geoflow training command")
    return path


def run_info(path: Path) -> dict:
    """The ``run.json`` of a run directory (``{}`` for a run without one)."""
    file = path / "run.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def count_parameters(model) -> int:
    """Trainable scalars (frozen arrays such as an empirical source's samples excluded)."""
    import equinox as eqx
    import jax

    from .nn import trainable

    return int(sum(a.size for a in jax.tree.leaves(eqx.filter(model, trainable(model)))))


# ---- points from files -----------------------------------------------------------------------


def read_points(path: Path, event_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Points ``(n, dim)`` from a ``.npy`` or CSV file; with ``event_shape``, points of any layout
    with that many numbers each (rotations as ``(n, 3, 3)`` or ``(n, 9)``) in that shape. The
    ``.npy`` is read without pickles, so loading never runs code from the file."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    x = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
    x = np.asarray(x, dtype=np.float32)
    if event_shape is not None and x.ndim >= 2 and len(x) and math.prod(x.shape[1:]) == math.prod(event_shape):
        x = x.reshape(len(x), *event_shape)
    elif event_shape is not None and x.ndim >= 2 and len(x):
        raise ValueError(f"{path} holds points of shape {x.shape[1:]}; the model expects points of shape "
                         f"{tuple(event_shape)} ({math.prod(event_shape)} numbers each)")
    elif x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{path} holds an array of shape {x.shape}; expected points (n, dim) with n > 0")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(1).sum())
        raise ValueError(f"{path} contains NaN or inf in {bad} row(s); expected finite values")
    return x


def points_on_manifold(manifold, x: np.ndarray, name: str, where: str = "") -> np.ndarray:
    """``x`` in the manifold's canonical coordinates (torus angles wrapped), or one clear error
    counting the points off it (tolerance 1e-4). ``manifold``: anything with ``canonical`` and
    ``belongs`` (the ``manifolds`` package's)."""
    import jax

    x = np.asarray(jax.vmap(manifold.canonical)(x))
    off = int((~np.asarray(jax.vmap(lambda p: manifold.belongs(p, 1e-4))(x))).sum())
    if off:
        raise ValueError(f"{where}{off} of {len(x)} point(s) are off the {name} manifold (tolerance 1e-4)")
    return x


# ---- commands and models from other packages --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FitModels:
    """Models a package adds to ``geoflow fit`` (entry-point group ``geoflow.fit_models``).

    **Fields:** ``models``: the ``--model`` names; ``data``: the ``--data`` names they train on,
    described as ``data_kind`` (e.g. ``"token data"``) when another model is asked to train on
    them; ``sources``: extra ``--source`` names; ``fit(args) -> dict``: the whole command (use
    :class:`TrainingRun`); ``evaluate(args, model, info) -> dict``: ``geoflow eval`` of a run whose
    ``run.json`` names one of ``models`` (``None``: the core's NLL evaluation);
    ``add_arguments(parser)``: options of ``geoflow fit`` only these models take — any of them
    given with another model is refused."""

    models: tuple[str, ...]
    data: tuple[str, ...]
    data_kind: str
    fit: Callable[[argparse.Namespace], dict]
    sources: tuple[str, ...] = ()
    evaluate: Callable | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


@functools.cache
def registered(group: str) -> tuple:
    """The objects the installed distributions register under the entry-point ``group``, sorted
    by name, read once per process. A command whose package cannot be imported (its extra is
    not installed) is kept as one that says so when run; a ``fit`` model that cannot be is left
    out."""
    found = []
    for ep in sorted(entry_points(group=group), key=lambda ep: ep.name):
        try:
            found.append(ep.load())
        except ImportError as e:
            if group == COMMAND_GROUP:
                found.append(UnavailableCommand(ep.name, str(e)))
    return tuple(found)


@dataclasses.dataclass(frozen=True)
class UnavailableCommand:
    """A registered command whose package failed to import: ``geoflow NAME …`` prints why."""

    NAME: str
    reason: str

    def add_parser(self, sub):
        p = sub.add_parser(self.NAME, help=f"(unavailable: {self.reason})")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        return p

    def run(self, args):
        raise ValueError(f"geoflow {self.NAME} is unavailable: {self.reason}")
