"""The ModelOptimization status, following the Kubernetes API conventions.

Conditions are the contract (type, status, reason, message, lastTransitionTime);
the rest is a readable summary of the pipeline: one entry per stage, metrics,
artifact URIs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from kubeslim.api.base import ApiModel


class State(StrEnum):
    """The resource's overall state, shown in `kubectl get mopt`."""

    pending = "Pending"
    waiting = "Waiting"
    running = "Running"
    suspended = "Suspended"
    succeeded = "Succeeded"
    failed = "Failed"


class StageState(StrEnum):
    """One stage's state."""

    pending = "Pending"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"
    skipped = "Skipped"


class ConditionType(StrEnum):
    """Condition types: the three summary ones and one per stage."""

    ready = "Ready"  # True once the optimized model and its metrics are available.
    succeeded = "Succeeded"  # True when every enabled stage finished.
    failed = "Failed"  # True when the pipeline stopped on an error it will not retry.
    waiting = "Waiting"  # True while the operator's concurrency limit holds the pipeline back.
    suspended = "Suspended"  # True while spec.suspend holds the pipeline (no Job runs).
    pruned = "Pruned"
    converted = "Converted"
    quantized = "Quantized"
    benchmarked = "Benchmarked"
    selected = "Selected"  # the search measured its candidates and chose (spec.search only)


STAGE_CONDITIONS: dict[str, ConditionType] = {
    "prune": ConditionType.pruned,
    "convert": ConditionType.converted,
    "quantize": ConditionType.quantized,
    "benchmark": ConditionType.benchmarked,
    "select": ConditionType.selected,
}


class Reason(StrEnum):
    """Condition reasons (CamelCase, as the API conventions ask)."""

    pending = "Pending"  # Not started yet.
    waiting_for_capacity = "WaitingForCapacity"  # The operator's concurrency limit is reached.
    job_created = "JobCreated"  # The stage's Job exists and runs.
    running = "Running"  # The stage reports progress.
    completed = "Completed"  # The stage finished and its result is recorded.
    reused = "Reused"  # The stage's inputs did not change; the cached result stands.
    skipped = "Skipped"  # The stage is disabled in the spec.
    job_failed = "JobFailed"  # The stage's Job failed after its retries.
    invalid_spec = "InvalidSpec"  # The spec passed the schema but not the operator's validation.
    all_stages_completed = "AllStagesCompleted"  # Every enabled stage finished.
    capacity_available = "CapacityAvailable"  # Not held back by the concurrency limit.
    in_progress = "InProgress"  # Stages are still running or pending.
    # The resource cannot work on a cluster (say, a local artifacts path no Pod shares).
    unsupported_in_cluster = "UnsupportedInCluster"
    pod_cannot_start = "PodCannotStart"  # The stage's Pod could not start (image, config, node).
    suspended = "Suspended"  # spec.suspend is true: running Jobs were deleted, none is created.
    resumed = "Resumed"  # spec.suspend went back to false.
    cancelled = "Cancelled"  # The kubeslim.dev/cancel annotation stopped the pipeline.
    not_allowed = "NotAllowed"  # The spec asks for what the operator's allow-lists refuse.


class Condition(ApiModel):
    """A condition as in metav1.Condition."""

    type: str = Field(max_length=316, description="type of condition in CamelCase.")
    status: Literal["True", "False", "Unknown"] = Field(description="status of the condition.")
    reason: str = Field(default="", max_length=1024, description="reason in CamelCase.")
    message: str = Field(default="", max_length=32768, description="message for humans.")
    last_transition_time: str = Field(
        default_factory=lambda: now_rfc3339(),
        description="lastTransitionTime: when status last changed (RFC 3339).",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="observedGeneration the condition was set for."
    )


class Progress(ApiModel):
    """Live progress of a running stage."""

    phase: str = Field(default="", max_length=128, description="phase inside the stage.")
    epoch: int | None = Field(default=None, ge=0, description="epoch now running.")
    epochs: int | None = Field(default=None, ge=0, description="epochs in all.")
    step: int | None = Field(default=None, ge=0, description="step (pruning step or batch).")
    steps: int | None = Field(default=None, ge=0, description="steps in all.")
    loss: float | None = Field(default=None, description="loss of the latest batch.")
    accuracy: float | None = Field(default=None, description="latest validation accuracy.")
    images_per_second_per_worker: float | None = Field(
        default=None,
        ge=0.0,
        description="imagesPerSecondPerWorker is the fine-tuning rate of one worker so far.",
    )
    loader_wait_share: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="loaderWaitShare is the share of step time spent waiting for the next "
        "batch (high: add dataset.loaderWorkers; low: add workers).",
    )
    resumed_from: int | None = Field(
        default=None, ge=0, description="resumedFrom is the step a checkpoint resumed from."
    )


class StageStatus(ApiModel):
    """One stage's Job and outcome."""

    name: str = Field(max_length=32, description="name of the stage.")
    state: StageState = Field(default=StageState.pending, description="state of the stage.")
    job_name: str | None = Field(default=None, max_length=63, description="jobName running it.")
    fingerprint: str | None = Field(
        default=None, max_length=64, description="fingerprint of the spec parts it depends on."
    )
    start_time: str | None = Field(default=None, description="startTime (RFC 3339).")
    completion_time: str | None = Field(default=None, description="completionTime (RFC 3339).")
    duration_seconds: float | None = Field(default=None, ge=0, description="durationSeconds.")
    attempts: int = Field(default=0, ge=0, description="attempts: Pods started for it.")
    message: str = Field(default="", max_length=4096, description="message: last news.")
    result_uri: str | None = Field(
        default=None, max_length=1024, description="resultUri of its result.json."
    )
    cache_key: str | None = Field(
        default=None,
        max_length=160,
        description="cacheKey of the stage's entry in the shared cache (<stage>/<sha256> below "
        "<artifacts.uri>/cache), which resources with the same inputs reuse.",
    )
    progress: Progress | None = Field(default=None, description="progress while running.")


class JobSummary(ApiModel):
    """One child Job and its Pod counts, as the Job reports them."""

    name: str = Field(max_length=63, description="name of the Job.")
    stage: str = Field(max_length=32, description="stage it runs.")
    workers: int | None = Field(
        default=None,
        ge=2,
        le=256,
        description="workers: the worker Pods of an Indexed Job (a multi-worker prune); "
        "empty for a one-Pod Job.",
    )
    active: int = Field(default=0, ge=0, description="active Pods.")
    succeeded: int = Field(default=0, ge=0, description="succeeded Pods.")
    failed: int = Field(default=0, ge=0, description="failed Pods.")


class ModelMetrics(ApiModel):
    """Measured figures of one model (speed: medians over interleaved rounds)."""

    accuracy: float | None = Field(
        default=None, description="accuracy: top-1 on the test split, 0..1."
    )
    tuning_accuracy: float | None = Field(
        default=None,
        description="tuningAccuracy: top-1 on the tuning split (what accuracy control saw).",
    )
    latency_ms_p50: float | None = Field(default=None, description="latency p50 at batch 1.")
    latency_ms_p90: float | None = Field(default=None, description="latency p90 at batch 1.")
    throughput_fps: float | None = Field(
        default=None, description="throughputFps: images per second at the largest batch size."
    )
    throughput: dict[str, float] | None = Field(
        default=None,
        max_length=8,
        description="throughput: images per second by batch size.",
    )
    precision: str | None = Field(
        default=None,
        max_length=64,
        description="precision the convolutions ran in (bf16, f32, int8, or int8+bf16 when "
        "some layers stayed in float).",
    )
    size_bytes: int | None = Field(default=None, ge=0, description="IR size on disk.")
    size_bytes_fp16: int | None = Field(
        default=None, ge=0, description="sizeBytesFp16: IR size with FP16 weights."
    )
    flops: int | None = Field(default=None, ge=0, description="FLOPs (2 x MACs) per image.")
    params: int | None = Field(default=None, ge=0, description="parameters.")


class Metrics(ApiModel):
    """The original next to the optimized model, and what that buys."""

    baseline: ModelMetrics | None = Field(default=None, description="baseline: the original.")
    optimized: ModelMetrics | None = Field(default=None, description="optimized model.")
    speedup: float | None = Field(
        default=None, description="speedup in throughput at speedupBatch."
    )
    speedup_batch: int | None = Field(
        default=None, ge=1, description="speedupBatch: the (largest) batch size of speedup."
    )
    speedup_by_batch: dict[str, float] | None = Field(
        default=None,
        max_length=8,
        description="speedupByBatch: throughput speedup at each batch size, the median of "
        "per-round ratios.",
    )
    latency_speedup: float | None = Field(default=None, description="latencySpeedup at p50.")
    size_reduction: float | None = Field(
        default=None,
        description="sizeReduction: the original's IR size with FP16 weights / the optimized "
        "IR's size.",
    )
    size_reduction_vs_fp32: float | None = Field(
        default=None,
        description="sizeReductionVsFp32: the original's FP32 IR size / the optimized IR's size.",
    )
    accuracy_drop: float | None = Field(
        default=None,
        description="accuracyDrop in points (percentage points) on the test split.",
    )
    tuning_accuracy_drop: float | None = Field(
        default=None, description="tuningAccuracyDrop in points on the tuning split."
    )
    precision: str | None = Field(
        default=None, max_length=64, description="precision OpenVINO used for float layers."
    )
    rounds: int | None = Field(
        default=None, ge=1, description="rounds of interleaved speed measurement."
    )


class Artifacts(ApiModel):
    """URIs of what the stages produced."""

    pruned_model: str | None = Field(default=None, description="prunedModel (torch).")
    onnx: str | None = Field(default=None, description="onnx model.")
    ir: str | None = Field(default=None, description="ir: OpenVINO IR with FP16 weights.")
    int8_ir: str | None = Field(default=None, description="int8Ir: quantized OpenVINO IR.")
    report: str | None = Field(default=None, description="report: the benchmark result.")


class CandidateState(StrEnum):
    """One search candidate's state."""

    pending = "Pending"
    running = "Running"
    measured = "Measured"  # pruned, converted, quantized and measured
    failed = "Failed"


class SearchOutcome(StrEnum):
    """Where the search stands."""

    searching = "Searching"  # rounds still run
    selected = "Selected"  # a candidate within the budget was chosen
    no_candidate_within_budget = "NoCandidateWithinBudget"  # see closest


class CandidateStatus(ApiModel):
    """One pruning target the search tried, measured beside the original."""

    name: str = Field(max_length=32, description="name of the candidate (from its target).")
    target: float = Field(description="target: the pruning target (flopsReduction or filterRate).")
    round: int = Field(default=0, ge=0, description="round the candidate was tried in.")
    state: CandidateState = Field(default=CandidateState.pending, description="state.")
    flops_reduction: float | None = Field(
        default=None, description="flopsReduction: the FLOPs cut actually reached, 0..1."
    )
    accuracy_before_int8: float | None = Field(
        default=None, description="accuracyBeforeInt8: the pruned FP model on the tuning split."
    )
    accuracy_after_int8: float | None = Field(
        default=None, description="accuracyAfterInt8: the pruned INT8 model on the tuning split."
    )
    accuracy_drop: float | None = Field(
        default=None, description="accuracyDrop after INT8 against the original, in points."
    )
    speedup: float | None = Field(
        default=None, description="speedup of the objective's measure over the original."
    )
    size_bytes: int | None = Field(default=None, ge=0, description="sizeBytes of the INT8 IR.")
    within_budget: bool | None = Field(
        default=None, description="withinBudget: the drop fits maxAccuracyDrop."
    )


class SearchStatus(ApiModel):
    """The search over pruning targets: every candidate and the choice."""

    outcome: SearchOutcome = Field(
        default=SearchOutcome.searching, description="outcome of the search so far."
    )
    round: int = Field(default=0, ge=0, description="round now running or last finished.")
    candidates: list[CandidateStatus] = Field(
        default=[], max_length=64, description="candidates tried, by target."
    )
    chosen: str | None = Field(
        default=None, max_length=32, description="chosen candidate's name, within the budget."
    )
    closest: str | None = Field(
        default=None,
        max_length=32,
        description="closest candidate to the budget when none meets it.",
    )
    chosen_speedup: str | None = Field(
        default=None, description="chosenSpeedup for printer columns."
    )
    chosen_drop: str | None = Field(default=None, description="chosenDrop for printer columns.")
    selected_ir: str | None = Field(
        default=None, max_length=1024, description="selectedIr: stable URI of the chosen IR."
    )
    report: str | None = Field(
        default=None, max_length=1024, description="report: URI of the HTML report."
    )
    message: str = Field(default="", max_length=1024, description="message for humans.")


class ModelOptimizationStatus(ApiModel):
    """Observed state of a ModelOptimization."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="observedGeneration the status describes."
    )
    state: State = Field(default=State.pending, description="state of the pipeline.")
    current_stage: str | None = Field(
        default=None, max_length=32, description="currentStage running or next."
    )
    summary: str = Field(default="", max_length=1024, description="summary in one line.")
    conditions: list[Condition] = Field(
        default=[], max_length=16, description="conditions, one per type."
    )
    stages: list[StageStatus] = Field(default=[], max_length=16, description="stages in order.")
    jobs: list[JobSummary] = Field(
        default=[], max_length=64, description="jobs of the current pipeline run, keyed by name."
    )
    metrics: Metrics | None = Field(default=None, description="metrics once benchmarked.")
    artifacts: Artifacts = Field(default_factory=Artifacts, description="artifacts produced.")
    speedup: str | None = Field(default=None, description="speedup for printer columns.")
    size_reduction: str | None = Field(default=None, description="sizeReduction for columns.")
    accuracy_drop: str | None = Field(default=None, description="accuracyDrop for columns.")
    search: SearchStatus | None = Field(
        default=None, description="search: candidates and the chosen one, when spec.search is set."
    )
    retries: int = Field(
        default=0,
        ge=0,
        description="retries: how many kubeslim.dev/retry requests were acted on; a retried "
        "stage's Jobs carry this round in their name (-r<N>).",
    )
    last_retry: str | None = Field(
        default=None,
        max_length=253,
        description="lastRetry: the kubeslim.dev/retry annotation value last acted on.",
    )
    last_cancel: str | None = Field(
        default=None,
        max_length=253,
        description="lastCancel: the kubeslim.dev/cancel annotation value last acted on.",
    )
    next_step: str | None = Field(
        default=None,
        max_length=1024,
        description="nextStep: what a person can do now (kubectl describe shows it).",
    )


def now_rfc3339() -> str:
    """The current time as the API server writes it."""
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
