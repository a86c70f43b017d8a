"""Where a benchmark's figures go: ``benchmarks/results/``, written by :func:`write_results`."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def write_results(path: Path, figures, *, quick: bool, indent: int = 2) -> bool:
    """Write ``figures`` as JSON to ``path`` and say so, unless ``quick``: a smoke run
    (``--quick``) never replaces a recorded figure. Returns whether it wrote."""
    if quick:
        return False
    path.write_text(json.dumps(figures, indent=indent))
    print(f"wrote {path}", flush=True)
    return True
