"""A metric curve of a long, resumable training run, kept in a JSON file beside its checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path


class PersistedCurve:
    """Points ``{"step": …, "train_cpu_s": …, <metrics>}`` in step order, written to ``path``
    after each one, so that a run resumed from its checkpoint (``fit(resume=True)``) continues
    its curve and its CPU clock instead of starting them again.

    The clock is this process's CPU time plus the last recorded point's ``train_cpu_s``;
    :meth:`exclude` takes out time the caller does not count as training (evaluation).
    ``path=None`` keeps the points in memory only."""

    def __init__(self, path: Path | None, resume: bool):
        self.path = path
        self.points = json.loads(path.read_text()) if resume and path is not None and path.is_file() else []
        self._origin = time.process_time() - (self.points[-1]["train_cpu_s"] if self.points else 0.0)

    def cpu_s(self) -> float:
        """Training CPU seconds so far, across resumed runs."""
        return time.process_time() - self._origin

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` of CPU (spent evaluating, say) out of the training clock."""
        self._origin += seconds

    def recorded(self, step: int) -> bool:
        """Whether ``step`` is already on the curve (the chunk a resumed run starts from)."""
        return bool(self.points) and step <= self.points[-1]["step"]

    def add(self, step: int, **metrics) -> dict:
        """Record ``metrics`` at ``step`` with the clock's reading; returns the point."""
        point = {"step": step, "train_cpu_s": self.cpu_s(), **metrics}
        self.points.append(point)
        if self.path is not None:
            self.path.write_text(json.dumps(self.points))
        return point
