"""The planner: a pure function from what is observed to what to do next."""

from kubeslim.planner.model import (
    Action,
    Event,
    JobPhase,
    JobRequest,
    ObservedJob,
    Plan,
    PlanInput,
    Slots,
    job_name,
)
from kubeslim.planner.plan import plan, stage_shards

__all__ = [
    "Action",
    "Event",
    "JobPhase",
    "JobRequest",
    "ObservedJob",
    "Plan",
    "PlanInput",
    "Slots",
    "job_name",
    "plan",
    "stage_shards",
]
