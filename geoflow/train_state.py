"""What :func:`geoflow.fit` carries from chunk to chunk and writes to its checkpoint: the
:class:`History` a user gets, the :class:`TrainingState` of the host loop, and the adoption of a
checkpoint's arrays into the model given to a resumed run."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .nn import trainable
from .serialization import classes_in, load, register_migration, save
from .train_devices import Placement, put_tree


@dataclasses.dataclass
class History:
    """What happened during :func:`fit`. Losses are recorded once per chunk of steps:
    ``train_loss[i]`` is the mean training loss over the applied steps of the chunk ending at
    ``steps[i]``. ``skipped_steps``: the steps not applied because their loss or gradient was
    not finite (only with ``fit(skip_nonfinite=...)``). ``cpu_time``: the process's CPU seconds
    in the training loop (the steps with their compilation, and validation), summed over a run
    and the runs that resumed it; the callback's and the checkpoint writes' are left out, so it
    is the clock a curve of a metric against training CPU time reads. NaN when the run resumed a
    checkpoint written before this clock was kept."""

    steps: list[int] = dataclasses.field(default_factory=list)
    train_loss: list[float] = dataclasses.field(default_factory=list)
    val_loss: list[float] = dataclasses.field(default_factory=list)
    best_step: int | None = None
    best_val_loss: float | None = None
    stop_reason: str = "completed"
    wall_time: float = 0.0
    steps_per_second: float = float("nan")
    skipped_steps: list[int] = dataclasses.field(default_factory=list)
    cpu_time: float = 0.0


@dataclasses.dataclass
class TrainingState:
    """What :func:`fit`'s host loop carries from chunk to chunk: the trainable parameters, the
    optimizer state, the parameter average (``ema``, ``None`` when off), the step, the history,
    the best validated parameters (their loss is ``history.best_val_loss``) and how many
    validations since they improved, the first step whose loss or gradient was not finite
    beyond those ``fit(skip_nonfinite=...)`` allows (``bad_step``, −1 while there is none), and
    how many steps just before ``step`` were skipped in a row (``nonfinite_run``)."""

    params: object
    opt_state: object
    ema: object
    step: int = 0
    history: History = dataclasses.field(default_factory=History)
    best_params: object = None
    stale: int = 0
    bad_step: jax.Array = dataclasses.field(default_factory=lambda: jnp.asarray(-1, jnp.int32))
    nonfinite_run: jax.Array = dataclasses.field(default_factory=lambda: jnp.asarray(0, jnp.int32))

    @classmethod
    def start(cls, params, optimizer, ema_decay) -> TrainingState:
        return cls(params, optimizer.init(params), None if ema_decay is None else params)

    @classmethod
    def resumed(cls, checkpoint: Path, model, ema_decay) -> TrainingState:
        """The state saved in ``checkpoint`` (written by :meth:`save` for a model like ``model``)."""
        saved = load(checkpoint, trust=classes_in(model))  # the caller's own module classes too
        adopt = _ParameterAdoption(model, checkpoint)
        ema = None
        if ema_decay is not None:
            if saved.get("ema_model") is None:
                raise ValueError(f"checkpoint {checkpoint} holds no parameter average; resume it without ema_decay")
            ema = adopt(_trainable_params(saved["ema_model"]))
        params = _trainable_params(saved["model"])
        step, history = int(saved["step"]), saved["history"]
        return cls(adopt(params), adopt.within(saved["opt_state"], like=params), ema, step, history,
                   adopt(_trainable_params(saved["best_model"])),
                   nonfinite_run=jnp.asarray(_trailing_run(history.skipped_steps, step), jnp.int32))

    def put_on(self, placed: Placement) -> None:
        """Replicate everything a chunk carries over ``placed``'s mesh: the parameters, optimizer
        state and average, and the step counters. A chunk returns them replicated; anything it is
        first given in another placement would make the second chunk compile again."""
        self.params, self.opt_state, self.ema, self.bad_step, self.nonfinite_run = (
            put_tree(t, placed.mesh) for t in (self.params, self.opt_state, self.ema, self.bad_step, self.nonfinite_run))

    @property
    def evaluated(self):
        """The parameters that are validated, kept as best and returned: the average when there is one."""
        return self.params if self.ema is None else self.ema

    def stop_at_nan(self, losses: np.ndarray, applied: np.ndarray) -> bool:
        """After a chunk: if a step broke, record the steps before it, stop there, say so."""
        bad = int(self.bad_step)
        if bad < 0:
            return False
        self.history.stop_reason = "nan"
        if bad > self.step:
            self.record_chunk(bad - self.step, losses[: bad - self.step], applied[: bad - self.step])
        return True

    def record_chunk(self, n: int, losses: np.ndarray, applied: np.ndarray) -> None:
        """Record ``n`` steps from ``self.step``: their mean loss where applied, and the skipped ones."""
        self.history.skipped_steps += [self.step + int(i) for i in np.flatnonzero(~applied)]
        self.step += n
        self.history.steps.append(self.step)
        self.history.train_loss.append(float(losses[applied].mean()) if applied.any() else float("nan"))

    def record_validation(self, value: float) -> None:
        self.history.val_loss.append(value)
        best = self.history.best_val_loss
        if value < (math.inf if best is None else best):
            self.best_params, self.stale = self.evaluated, 0
            self.history.best_step, self.history.best_val_loss = self.step, value
        else:
            self.stale += 1

    def save(self, checkpoint: Path, static, model_now, clock: StepClock) -> None:
        """The checkpoint :meth:`resumed` reads (its layout is :func:`fit`'s documented one). Its
        history carries the wall time and step rate so far, so that a resumed run, even one with
        no steps left, reports the whole run's."""
        best_model = None if self.best_params is None else eqx.combine(self.best_params, static)
        history = dataclasses.replace(self.history, wall_time=self.history.wall_time + clock.wall(),
                                      steps_per_second=clock.rate if clock.seconds > 0 else self.history.steps_per_second)
        save(checkpoint, {"model": eqx.combine(self.params, static), "opt_state": self.opt_state, "step": self.step,
                          "history": history, "best_model": best_model,
                          "ema_model": None if self.ema is None else model_now})


def _trailing_run(skipped_steps: list[int], step: int) -> int:
    """How many of the steps just before ``step`` were skipped in a row."""
    run, skipped = 0, set(skipped_steps)
    while step - run - 1 in skipped:
        run += 1
    return run


# checkpoints name the class where it was first defined, and predate the skipped steps
register_migration("geoflow.train_state.History", lambda fields: {"skipped_steps": [], **fields},
                   renamed_from="geoflow.train.History")
# their CPU time is unknown, and stays so: NaN plus what the resumed run adds
register_migration("geoflow.train_state.History", lambda fields: {"cpu_time": float("nan"), **fields})


class StepClock:
    """Steps per second of the training chunks after the first (which includes compilation)."""

    def __init__(self):
        self.started, self.steps, self.seconds = time.perf_counter(), 0, 0.0

    def add(self, n: int, seconds: float, *, first: bool) -> None:
        if not first:
            self.steps, self.seconds = self.steps + n, self.seconds + seconds

    @property
    def rate(self) -> float:
        return self.steps / self.seconds

    def wall(self) -> float:
        return time.perf_counter() - self.started


def save_checkpoint(state: TrainingState, checkpoint: Path, static, model_now, clock: StepClock) -> None:
    """Process 0 writes the checkpoint; with several processes all wait until it is written, so
    that a later ``resume`` finds the same file in every process (they must agree on the step)."""
    if jax.process_index() == 0:
        state.save(checkpoint, static, model_now, clock)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"geoflow.fit checkpoint at step {state.step}")


def _trainable_params(model):
    """The trainable part of a saved model (``None`` stays ``None``)."""
    return None if model is None else eqx.partition(model, trainable(model))[0]


class _ParameterAdoption:
    """Moves a checkpoint's trained arrays into the structure of the model given to a resumed
    :func:`fit`. The static fields (a sampler's setting, say) are the given model's, so that a run
    resumed with another sampling option trains and returns the model asked for; the trainable
    arrays must agree with the given model's in place, shape and dtype, else the checkpoint was
    written for another model and is refused by name."""

    def __init__(self, model, checkpoint: Path):
        self.model_type, self.checkpoint = type(model), checkpoint
        self.paths, self.treedef = jax.tree_util.tree_flatten_with_path(_trainable_params(model), is_leaf=_is_none)

    def __call__(self, params):
        """``params``: the trainable part of a saved model (or ``None``) → the same arrays in the
        given model's structure."""
        if params is None:
            return None
        saved, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)
        if [path for path, _ in saved] != [path for path, _ in self.paths]:
            theirs, ours = ({jax.tree_util.keystr(p) for p, _ in t} for t in (saved, self.paths))
            differ = sorted(theirs ^ ours)
            where = (f"{differ[0]} is in {'the checkpoint' if differ[0] in theirs else 'the model given'} only"
                     if differ else "its trainable arrays are laid out in another order")
            raise ValueError(f"checkpoint {self.checkpoint} was written for another model: {where}")
        for (path, theirs), (_, ours) in zip(saved, self.paths):
            if _array_kind(theirs) != _array_kind(ours):
                raise ValueError(f"checkpoint {self.checkpoint} was written for another model: the trainable "
                                 f"{jax.tree_util.keystr(path)} is {_array_kind(theirs)} there and "
                                 f"{_array_kind(ours)} in the model given")
        return jax.tree.unflatten(self.treedef, [leaf for _, leaf in saved])

    def within(self, tree, like):
        """Every subtree of ``tree`` laid out as ``like`` (the saved trainable part: an optimizer's
        moments of it) adopted the same way; the rest of ``tree`` (step counts, hyperparameters)
        as it is."""
        layout = jax.tree.structure(like, is_leaf=_is_none)

        def shaped_like(node) -> bool:
            return isinstance(node, self.model_type) and jax.tree.structure(node, is_leaf=_is_none) == layout

        return jax.tree.map(lambda node: self(node) if shaped_like(node) else node, tree, is_leaf=shaped_like)


def _is_none(node) -> bool:
    return node is None


def _array_kind(leaf) -> str:
    """``'float32[3, 4]'``-style description of an array leaf; ``'None'`` for a non-trainable place."""
    return "None" if leaf is None else f"{jnp.dtype(leaf.dtype).name}{list(leaf.shape)}"


