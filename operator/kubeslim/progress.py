"""Progress of a running stage, as marker lines a parent process or the operator reads.

A stage never talks to Kubernetes: it prints `KUBESLIM_PROGRESS {json}` lines
on stdout. `kubeslim run` parses them from its child processes to draw
progress bars; the operator reads the last one from the Pod's log.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from kubeslim.constants import PROGRESS_MARKER


class Reporter:
    """Accumulates the current progress and emits it (throttled) as one JSON line."""

    def __init__(self, mode: str = "log", stream: TextIO | None = None, interval: float = 1.0):
        self.mode = mode
        self.stream = stream or sys.stdout
        self.interval = interval
        self.state: dict[str, Any] = {}
        self._last = 0.0

    def phase(self, name: str, **fields: Any) -> None:
        """Start a phase (e.g. 'fine-tune', 'export'); clears step counters."""
        self.state = {k: v for k, v in self.state.items() if k in ("epochs",)}
        self.state.update(phase=name, **fields)
        self._emit(force=True)

    def update(self, **fields: Any) -> None:
        """Merge fields (epoch, step, steps, loss, accuracy...) and maybe emit."""
        self.state.update({k: v for k, v in fields.items() if v is not None})
        self._emit(force=False)

    def _emit(self, force: bool) -> None:
        if self.mode == "none":
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.mode == "log":
            line = PROGRESS_MARKER + json.dumps(self.state, separators=(",", ":"))
        else:
            line = "  " + " ".join(f"{k}={v}" for k, v in self.state.items())
        print(line, file=self.stream, flush=True)


def parse_progress(line: str) -> dict[str, Any] | None:
    """The progress in a log line, or None."""
    idx = line.find(PROGRESS_MARKER)
    if idx < 0:
        return None
    try:
        value = json.loads(line[idx + len(PROGRESS_MARKER) :])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
