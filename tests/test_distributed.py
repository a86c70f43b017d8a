"""Training across processes as on a cluster: 2 processes × 2 CPU devices under
``jax.distributed`` (gloo collectives on localhost) against 1 process × 4 devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(process_id: int, num_processes: int, port: int, out: Path, scenario: str) -> subprocess.Popen:
    devices = 4 // num_processes
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, str(WORKER), str(process_id), str(num_processes), str(port), str(out),
                             scenario], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(process: subprocess.Popen, timeout: float) -> dict:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_processes_train_as_one_four_device_run(tmp_path):
    port = free_port()
    (tmp_path / "run").mkdir()
    (tmp_path / "reference").mkdir()
    workers = [start(i, 2, port, tmp_path / "run", "train") for i in range(2)]
    reference = result(start(0, 1, port, tmp_path / "reference", "train"), timeout=900)
    first, second = (result(w, timeout=900) for w in workers)
    # both processes return the same model, and it is the single-process run's
    assert first == second
    np.testing.assert_allclose(first["train"], reference["train"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(first["val"], reference["val"], rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(first["parameters"], reference["parameters"]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)
    # inside a step each of the 4 devices holds 64 / 4 examples, in both layouts
    assert first["shard_shapes"] == reference["shard_shapes"] == [[16, 2]]
    # process 0 alone wrote the checkpoint (process 1's writer raises), and both resumed from it
    assert first["stopped"] == "callback" and first["resume_matches"] and (tmp_path / "run" / "checkpoint.eqx").is_file()
    # OT-CFM's host solver: each process solves its own identical copy of the assignments
    np.testing.assert_allclose(first["ot"], reference["ot"], rtol=1e-4, atol=1e-4)
    # sharded data: each process passed its half, each device held a quarter and drew its
    # 16 examples from it; a rerun is identical, and the same partition over one process's
    # 4 devices trains the same model
    ours, theirs = first["sharded"], reference["sharded"]
    assert ours["rerun_matches"] and theirs["rerun_matches"]
    assert ours["rows_per_device"] == theirs["rows_per_device"] == 1000
    assert ours["shard_shapes"] == theirs["shard_shapes"] == [[16, 2]]
    np.testing.assert_allclose(ours["train"], theirs["train"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours["val"], theirs["val"], rtol=1e-4, atol=1e-4)
    for a, b in zip(ours["parameters"], theirs["parameters"]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert not np.allclose(ours["train"], first["train"])  # per-device draws, not the replicated run's batches


@pytest.mark.slow
def test_a_process_that_dies_stops_the_others(tmp_path):
    port = free_port()
    workers = [start(i, 2, port, tmp_path, "die") for i in range(2)]
    _, survivor_err = workers[0].communicate(timeout=600)  # JAX's heartbeat timeout is 15 s here
    workers[1].communicate(timeout=60)
    assert workers[1].returncode == 3
    assert workers[0].returncode != 0 and "another task died" in survivor_err, survivor_err[-2000:]
