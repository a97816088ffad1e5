"""Prometheus metrics of the operator, fed from the plans it carries out.

Resources by state, stage durations, stage failures by reason and the length of
the waiting queue; served on KUBESLIM_METRICS_PORT (0: off) at /metrics. Every
figure comes from a plan this process made, so after a restart the counters
start again at zero (Prometheus' rate() and increase() handle that) and the
state gauge fills as the operator looks at each resource again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubeslim.api.status import ConditionType, ModelOptimizationStatus, StageState, State
from kubeslim.planner.status import find_condition

# Stage run times: a tiny CPU stage takes seconds, fine-tuning a large model hours.
DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)


@dataclass
class OperatorMetrics:
    """The operator's metrics in a registry of their own (no process defaults mixed in)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _states: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.resources = Gauge(
            "kubeslim_optimizations",
            "ModelOptimizations by state, as this operator last planned them.",
            ["state"],
            registry=self.registry,
        )
        for state in State:
            self.resources.labels(state=state.value).set(0)
        self.stage_seconds = Histogram(
            "kubeslim_stage_duration_seconds",
            "Run time of a finished stage (its result's duration), by stage.",
            ["stage"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.failures = Counter(
            "kubeslim_stage_failures",
            "Pipelines that stopped on a stage, by stage and condition reason.",
            ["stage", "reason"],
            registry=self.registry,
        )
        self.queue = Gauge(
            "kubeslim_waiting_queue_length",
            "ModelOptimizations waiting for a concurrency slot.",
            registry=self.registry,
        )

    def observe(self, key: str, old: ModelOptimizationStatus, new: ModelOptimizationStatus) -> None:
        """Count what changed between the status read and the status planned."""
        before = {s.name: s for s in old.stages}
        for entry in new.stages:
            was = before.get(entry.name)
            finished = entry.state == StageState.succeeded and entry.duration_seconds is not None
            fresh = was is None or was.state != StageState.succeeded
            if finished and fresh and entry.duration_seconds is not None:
                self.stage_seconds.labels(stage=entry.name).observe(entry.duration_seconds)
        if new.state == State.failed and old.state != State.failed:
            failed = find_condition(new.conditions, ConditionType.failed)
            reason = failed.reason if failed is not None else ""
            self.failures.labels(stage=new.current_stage or "", reason=reason).inc()
        with self._lock:
            self._states[key] = new.state
            self._recount()

    def forget(self, key: str) -> None:
        """A resource is gone."""
        with self._lock:
            self._states.pop(key, None)
            self._recount()

    def waiting(self, length: int) -> None:
        """The queue's length now."""
        self.queue.set(length)

    def serve(self, port: int) -> None:
        """Serve /metrics on the port in a daemon thread."""
        start_http_server(port, registry=self.registry)

    def _recount(self) -> None:
        counts = {state.value: 0 for state in State}
        for state in self._states.values():
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            self.resources.labels(state=state).set(count)
