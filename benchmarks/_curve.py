"""A metric curve of a long, resumable training run, kept in a JSON file beside its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path


class PersistedCurve:
    """Points ``{"step": …, "train_cpu_s": …, <metrics>}`` in step order, written to ``path``
    after each one, so that a run resumed from its checkpoint (``fit(resume=True)``) continues
    its curve instead of starting it again.

    The clock is ``fit``'s ``History.cpu_time``: its checkpoint carries it, so the CPU time of
    steps run between the last point and the checkpoint a run resumes from is counted, and the
    evaluations a callback makes are not. ``path=None`` keeps the points in memory only."""

    def __init__(self, path: Path | None, resume: bool):
        self.path = path
        self.points = json.loads(path.read_text()) if resume and path is not None and path.is_file() else []

    def recorded(self, step: int) -> bool:
        """Whether ``step`` is already on the curve (the chunk a resumed run starts from)."""
        return bool(self.points) and step <= self.points[-1]["step"]

    def add(self, step: int, history, **metrics) -> dict:
        """Record ``metrics`` at ``step`` with ``history``'s training CPU time; returns the point."""
        point = {"step": step, "train_cpu_s": history.cpu_time, **metrics}
        self.points.append(point)
        if self.path is not None:
            self.path.write_text(json.dumps(self.points))
        return point
