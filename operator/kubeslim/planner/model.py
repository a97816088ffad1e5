"""What the planner reads and what it decides, as plain data (no Kubernetes types)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.api.status import ModelOptimizationStatus
from kubeslim.errors import SpecError
from kubeslim.planner.policy import Allowed

MAX_NAME = 63  # Job names become the `job-name` label value on their Pods.
FINGERPRINT_CHARS = 8  # of the stage fingerprint, in Job names


class JobPhase(StrEnum):
    """Where one Job stands, from its status conditions and counts."""

    active = "Active"  # created, Pods pending or running
    succeeded = "Succeeded"  # condition Complete
    failed = "Failed"  # condition Failed (backoffLimit or activeDeadlineSeconds reached)


@dataclass(frozen=True)
class ObservedJob:
    """One stage Job as the operator sees it, summarised from the Job and its Pod."""

    name: str
    stage: str
    fingerprint: str  # the spec fingerprint of its stage when it was created (annotation)
    generation: int  # the resource's generation when it was created (label)
    phase: JobPhase = JobPhase.active
    shard: str = ""  # "" for a stage that runs as one Job
    retry_round: int = 0  # the retry round that created it (label); 0 before any retry
    workers: int = 1  # Pods of an Indexed Job (a multi-worker prune), else 1
    active: int = 0
    ready: int = 0  # Pods running and ready: when 0 while active, its Pods may be stuck
    succeeded: int = 0
    failed: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    result: dict[str, Any] | None = None  # the parsed termination message, once read
    failure: str = ""  # why it failed: Job condition, then the Pod's log tail
    # Why its Pod cannot start ("ImagePullBackOff: ..."), read while the Job is active.
    blocked: str = ""
    blocked_reason: str = ""  # the Pod's reason alone (ImagePullBackOff, Unschedulable, ...)
    blocked_fatal: bool = False  # a configuration error: waiting cannot help
    blocked_since: str | None = None  # the Pod's creation time (RFC 3339)


@dataclass(frozen=True)
class Slots:
    """The operator-wide concurrency limit: who holds a slot now."""

    limit: int = 0  # 0: no limit
    holders: frozenset[str] = frozenset()  # keys ("namespace/name") holding a slot
    queue: tuple[str, ...] = ()  # keys waiting for a slot, first come first

    def free_for(self, key: str) -> bool:
        """Whether key holds a slot or may take one: free slots go to the waiting
        keys in the order they started waiting (a newcomer queues behind them)."""
        if self.limit <= 0 or key in self.holders:
            return True
        free = self.limit - len(self.holders)
        if free <= 0:
            return False
        ahead = [k for k in self.queue if k not in self.holders]
        position = ahead.index(key) if key in ahead else len(ahead)
        return position < free


@dataclass(frozen=True)
class SharedStage:
    """A stage another resource finished: where its outputs are in the shared cache."""

    owner: str  # "namespace/name" of the resource whose Job made it
    cache_key: str  # <stage>/<sha256> below <artifacts.uri>/cache
    outputs: Mapping[str, str] = field(default_factory=dict)  # output name -> file name
    metrics: Mapping[str, Any] | None = None  # the benchmark's, as the owner's status has them
    duration_seconds: float | None = None


@dataclass(frozen=True)
class PlanInput:
    """Everything the planner decides from."""

    name: str
    namespace: str
    generation: int
    spec: ModelOptimizationSpec | SpecError  # the parsed spec, or why it did not parse
    status: ModelOptimizationStatus
    jobs: Sequence[ObservedJob] = ()
    slots: Slots = Slots()
    now: str = ""
    start_timeout: float = 600.0  # seconds a stage Pod may wait to start (image pull, node)
    # The operator's allow-lists for what stage Pods may run with.
    allowed: Allowed = field(default_factory=Allowed)
    retry: str = ""  # the kubeslim.dev/retry annotation: a new value retries a failed stage
    cancel: str = ""  # the kubeslim.dev/cancel annotation: a new value stops the pipeline
    # Stages other resources with the same artifacts.uri finished with the same inputs,
    # by (stage, fingerprint): reused instead of run again (planner/shared.py).
    shared: Mapping[tuple[str, str], SharedStage] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The resource's key in the concurrency table."""
        return f"{self.namespace}/{self.name}"


class Action(StrEnum):
    """The decision: what the handler does after writing the new status."""

    create_jobs = "CreateJobs"  # create Plan.create (a 409 means it exists: fine)
    wait = "Wait"  # Jobs run; a Job event or the timer brings the next look
    wait_for_capacity = "WaitForCapacity"  # the concurrency limit is reached
    succeeded = "Succeeded"  # every enabled stage finished (terminal)
    failed = "Failed"  # a stage failed for this spec (terminal until the spec changes)
    invalid_spec = "InvalidSpec"  # the spec failed validation (terminal until it changes)
    suspended = "Suspended"  # spec.suspend: running Jobs go, none is created


TERMINAL_ACTIONS = frozenset({Action.succeeded, Action.failed, Action.invalid_spec})


@dataclass(frozen=True)
class JobRequest:
    """A Job to create: which stage (and shard), under which name, for which spec."""

    stage: str
    name: str
    fingerprint: str
    generation: int
    shard: str = ""
    retry_round: int = 0  # status.retries when it was planned (kubeslim.dev/retry requests)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the resource."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """The planner's decision and the status to write."""

    action: Action
    status: ModelOptimizationStatus
    create: tuple[JobRequest, ...] = ()
    delete: tuple[str, ...] = ()  # Jobs of an older spec still running: their work is moot
    events: tuple[Event, ...] = ()
    holds_slot: bool = False
    stage: str | None = None  # the stage the action concerns
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """Whether nothing more happens until the spec changes."""
        return self.action in TERMINAL_ACTIONS


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one RFC 3339 time to another (None if either is missing)."""
    if not start or not end:
        return None
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (b - a).total_seconds()


def artifacts_root(uri: str, namespace: str, name: str) -> str:
    """Each resource writes under <spec.artifacts.uri>/<namespace>/<name>."""
    return f"{uri.rstrip('/')}/{namespace}/{name}"


def job_name(
    resource: str,
    stage: str,
    generation: int,
    shard: str = "",
    *,
    fingerprint: str = "",
    retry_round: int = 0,
) -> str:
    """`<resource>-<stage>-g<generation>-<fingerprint[:8]>[-<shard>]`, cut and hashed to
    fit 63 characters.

    The fingerprint in the name means a Job of another spec (an older operator's,
    or a deleted namesake's) never answers 409 for this one.
    """
    name = f"{resource}-{stage}-g{generation}"
    name += (f"-{fingerprint[:FINGERPRINT_CHARS]}" if fingerprint else "") + (
        f"-{shard}" if shard else ""
    )
    name += f"-r{retry_round}" if retry_round else ""
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"
