"""Where :func:`geoflow.fit`'s arrays live: one device, replicated over a one-axis mesh, or
spread over it, in one process or several (after ``jax.distributed.initialize()``)."""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def split_cpu(count: int) -> None:
    """Present this machine's CPU as ``count`` devices, so that ``fit(devices=count)`` trains
    data-parallel over its cores: each device runs its share of the batch in a thread of its
    own. A small network's single program leaves cores idle (XLA:CPU splits little of it), so
    this is faster there; GPUs are unaffected. Must run before JAX's first operation."""
    if not (isinstance(count, int) and count >= 1):
        raise ValueError(f"devices must be a positive count, got {count!r}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as e:
        if len(jax.devices("cpu")) != count:
            raise ValueError(f"the CPU can be split into {count} devices only before JAX's first operation; "
                             f"this process already has {len(jax.devices('cpu'))}") from e


def make_mesh(devices):
    if devices is None:
        return None
    devs = jax.devices() if devices == "all" else (jax.devices()[:devices] if isinstance(devices, int) else list(devices))
    return Mesh(np.asarray(devs), ("batch",))


def put_replicated(a, mesh):
    """Replicate an array over the mesh (every process passes the same full array)."""
    if a is None:
        return None
    if mesh is None:
        return jnp.asarray(a)
    sharding = NamedSharding(mesh, P())
    if jax.process_count() > 1:
        return jax.make_array_from_process_local_data(sharding, np.asarray(a), np.shape(a))
    return jax.device_put(a, sharding)


def put_rows(a, mesh, what: str):
    """This process's rows of a set spread over the mesh: split evenly over its devices, each
    device keeping as many rows as the device with the fewest (the rest left out, with a warning)."""
    if a is None:
        return None
    a = np.asarray(a)
    local_devices = mesh.size // jax.process_count()
    per_device = min(process_sizes(len(a))) // local_devices
    if per_device == 0:
        raise ValueError(f"{what}: a process holds {min(process_sizes(len(a)))} rows for its {local_devices} "
                         "devices; shard_data needs at least one row per device")
    kept = per_device * local_devices
    if kept < len(a):
        warnings.warn(f"fit(shard_data=True): {len(a) - kept} of this process's {len(a)} rows of {what} are left "
                      f"out so that every device holds {per_device}", RuntimeWarning, stacklevel=4)
    global_shape = (per_device * mesh.size, *a.shape[1:])
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P("batch")), a[:kept], global_shape)


def process_sizes(n: int) -> list[int]:
    """Every process's ``n``, in process order."""
    if jax.process_count() == 1:
        return [n]
    from jax.experimental import multihost_utils

    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.asarray(n))).ravel()]


def all_processes(a):
    """``a``'s first rows from every process, concatenated in process order (as many from each as
    the process with the fewest); ``a`` itself in a single process."""
    if jax.process_count() == 1:
        return a
    from jax.experimental import multihost_utils

    a = np.asarray(a)[: min(process_sizes(len(a)))]
    return np.concatenate(list(np.asarray(multihost_utils.process_allgather(a))), 0)


class Placement:
    """Where the training and validation arrays live: replicated over the mesh, spread over it
    (``sharded``), and a copy on one device for a loss with a host solver (whose validation
    runs there too)."""

    def __init__(self, mesh, host_solver: bool, train, val, sharded: bool = False, on_disk: bool = False):
        self.mesh, self.host_solver = mesh, host_solver
        self.batch_sharding = None if mesh is None else NamedSharding(mesh, P("batch"))
        put = (lambda a, what: put_rows(a, mesh, what)) if sharded else (lambda a, what: put_replicated(a, mesh))
        self.on_disk = train if on_disk else None  # read chunk by chunk (read_chunk), never placed whole
        self.train = (None, None) if on_disk else (put(train[0], "training data"), put(train[1], "training conditions"))
        self.prepare_data = on_one_device(self.train, mesh) if host_solver else None
        self.val = None if val is None else self.on_eval_device((put(val[0], "validation data"),
                                                                 put(val[1], "validation conditions")))

    def on_eval_device(self, tree):
        return on_one_device(tree, self.mesh) if self.host_solver else tree


def on_one_device(tree, mesh):
    """``tree``'s replicated arrays as this process's copy on its first device (every process
    holds the whole of a replicated array, so each works on its own)."""
    if mesh is None:
        return tree
    return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


def put_tree(tree, mesh):
    """``tree``'s arrays replicated over the mesh (from each process's identical local copy)."""
    if mesh is None:
        return tree
    return jax.tree.map(lambda a: put_replicated(a, mesh) if eqx.is_array(a) else a, tree)
