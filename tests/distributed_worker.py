"""One process of the multi-process training check (``test_distributed.py``), or the
single-process reference: ``python distributed_worker.py PROCESS_ID NUM_PROCESSES PORT OUT SCENARIO``.

With ``NUM_PROCESSES > 1`` the process joins a ``jax.distributed`` run over gloo on localhost.
Scenario ``train`` fits a flow on every device of the run (recording the batch's sharding as the
loss sees it), interrupts and resumes a second fit from process 0's checkpoint, and fits OT-CFM
(a host solver), and fits with ``shard_data=True`` on this process's part of the data (twice, to
show the run is a pure function of its key); it prints one JSON line. Scenario ``die``: process 1 exits in the middle of
training, and the others must stop."""

import json
import os
import sys

import jax

process_id, num_processes, port, out, scenario = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id, initialization_timeout=300,
                               # short for the crash check; generous otherwise, as a loaded machine (the
                               # suite beside it) can starve a heartbeat thread for seconds
                               heartbeat_timeout_seconds=15 if scenario == "die" else 120)

import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402

import geoflow as gf  # noqa: E402
import geoflow.train_devices  # noqa: E402
from geoflow.continuous import cfm, flow_matching  # noqa: E402
from geoflow.datasets import sample_toy  # noqa: E402

assert len(jax.devices()) == 4 and jax.process_count() == num_processes, (jax.devices(), jax.process_count())
x = sample_toy("moons", 4000, seed=0)
model = gf.nsf(jax.random.key(0), 2, layers=2, width=16)
kw = dict(key=jax.random.key(1), steps=100, batch_size=64, eval_every=50, progress=False, devices="all")

if scenario == "die":
    def stop_here(step, m, h):
        if process_id == 1 and step >= 100:
            os._exit(3)  # no clean-up, as a crash
    gf.fit(model, x, **{**kw, "steps": 100_000, "callback": stop_here})
    raise SystemExit("trained to the end although a process died")

if process_id != 0:  # only process 0 writes checkpoints
    def refuse(*args, **kwargs):
        raise AssertionError(f"process {process_id} wrote a checkpoint")
    geoflow.train.save = refuse

shards = []


def recording_loss(m, xb, cb, key):
    if xb.shape[0] == kw["batch_size"]:  # a training batch (validation passes the whole split)
        jax.debug.inspect_array_sharding(xb, callback=lambda s: shards.append(s.shard_shape(xb.shape)))
    return gf.train.maximum_likelihood(m, xb, cb, key)


trained, history = gf.fit(model, x, loss=recording_loss, **kw)
leaves = lambda m: [np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else np.asarray(a)
                    for a in jax.tree.leaves(eqx.filter(m, eqx.is_inexact_array))]

checkpoint = os.path.join(out, "checkpoint.eqx")
_, part = gf.fit(model, x, checkpoint=checkpoint, callback=lambda step, m, h: step >= 50, **kw)
resumed, _ = gf.fit(model, x, checkpoint=checkpoint, resume=True, **kw)
uninterrupted, _ = gf.fit(model, x, **kw)
resume_matches = all(np.array_equal(a, b) for a, b in zip(leaves(resumed), leaves(uninterrupted)))

fm = flow_matching(jax.random.key(0), 2, width=16, depth=2)
_, ot = gf.fit(fm, x, loss=cfm("ot-cfm"), **{**kw, "steps": 40, "eval_every": 20})

# each process passes only its part of the data: 4000 / 4 rows per device, a batch drawn per device
mine = slice(process_id * len(x) // num_processes, (process_id + 1) * len(x) // num_processes)
x_val = sample_toy("moons", 400, seed=1)
val_part = slice(process_id * 400 // num_processes, (process_id + 1) * 400 // num_processes)
shards.clear()
sharded = [gf.fit(model, x[mine], val_data=x_val[val_part], shard_data=True, loss=recording_loss, **kw) for _ in range(2)]
mesh = geoflow.train_devices.make_mesh("all")
rows_per_device = geoflow.train_devices.put_rows(x[mine], mesh, "x").addressable_shards[0].data.shape[0]
(m1, h1), (m2, h2) = sharded

print(json.dumps({"sharded": {"train": h1.train_loss, "val": h1.val_loss, "parameters": [a.ravel().tolist() for a in leaves(m1)],
                              "rerun_matches": all(np.array_equal(a, b) for a, b in zip(leaves(m1), leaves(m2))),
                              "rows_per_device": rows_per_device, "shard_shapes": sorted({tuple(s) for s in shards})},
                  "train": history.train_loss, "val": history.val_loss,
                  "parameters": [a.ravel().tolist() for a in leaves(trained)],
                  "shard_shapes": sorted({tuple(s) for s in shards}), "stopped": part.stop_reason,
                  "resume_matches": resume_matches, "ot": ot.train_loss + ot.val_loss}))
