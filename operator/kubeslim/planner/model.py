"""What the planner reads and what it decides, as plain data (no Kubernetes types)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.api.status import ModelOptimizationStatus
from kubeslim.errors import SpecError

MAX_NAME = 63  # Job names become the `job-name` label value on their Pods.


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
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    result: dict[str, Any] | None = None  # the parsed termination message, once read
    failure: str = ""  # why it failed: Job condition, then the Pod's log tail


@dataclass(frozen=True)
class Slots:
    """The operator-wide concurrency limit: who holds a slot now."""

    limit: int = 0  # 0: no limit
    holders: frozenset[str] = frozenset()  # keys ("namespace/name") holding a slot

    def free_for(self, key: str) -> bool:
        """Whether key holds a slot or may take one."""
        return self.limit <= 0 or key in self.holders or len(self.holders - {key}) < self.limit


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


TERMINAL_ACTIONS = frozenset({Action.succeeded, Action.failed, Action.invalid_spec})


@dataclass(frozen=True)
class JobRequest:
    """A Job to create: which stage (and shard), under which name, for which spec."""

    stage: str
    name: str
    fingerprint: str
    generation: int
    shard: str = ""


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


def job_name(resource: str, stage: str, generation: int, shard: str = "") -> str:
    """`<resource>-<stage>-g<generation>[-<shard>]`, cut and hashed to fit 63 characters."""
    name = f"{resource}-{stage}-g{generation}" + (f"-{shard}" if shard else "")
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"
