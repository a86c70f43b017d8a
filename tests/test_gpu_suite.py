"""``benchmarks/gpu_suite.py`` runs on this CPU: figures and the device written to its JSON, and
host callbacks counted — none for a plain flow, some for OT-CFM's assignments (declared host
work, solved outside the training scan)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.mark.slow
def test_gpu_suite_quick_runs_on_cpu(tmp_path):
    out = tmp_path / "suite.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--only", "classic", "ot-cfm", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=SCRIPT.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["platform"] == "cpu" and result["quick"] and result["host_fallbacks"] == []
    rows = {r["workload"]: r for r in result["rows"]}
    flow, ot = rows["NSF (coupling spline)"], rows["OT-CFM"]
    assert flow["steps_per_s"] > 0 and flow["log_prob_points_per_s"] > 0 and flow["host_callbacks_per_step"] == 0
    assert ot["host_work_expected"] and ot["host_callbacks_per_step"] > 0
