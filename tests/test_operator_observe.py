"""The operator's translation of Jobs, Pods and logs into planner data (no cluster needed)."""

from __future__ import annotations

import json
from typing import Any

import kopf
import pytest

from kubeslim.api.status import ModelOptimizationStatus, Progress
from kubeslim.config import OperatorConfig
from kubeslim.constants import PROGRESS_MARKER
from kubeslim.handlers.handle_index import running_keys, running_optimizations
from kubeslim.handlers.handle_timer_optimization import unsettled
from kubeslim.handlers.main import register
from kubeslim.handlers.observe import (
    dump_status,
    failure_text,
    latest_progress,
    merge_patch,
    observe_job,
    owned_by,
    read_status,
    stage_result,
)
from kubeslim.handlers.reconcile import Runtime, SlotTable
from kubeslim.planner import JobPhase
from kubeslim.planner.status import set_condition

JOB: dict[str, Any] = {
    "metadata": {
        "name": "demo-prune-g2",
        "labels": {"kubeslim.dev/stage": "prune", "kubeslim.dev/generation": "2"},
        "annotations": {"kubeslim.dev/fingerprint": "f" * 64},
        "ownerReferences": [{"uid": "u1", "controller": True}],
    },
    "status": {"active": 1, "startTime": "2026-11-27T07:00:00Z"},
}


def pod(exit_code: int | None, message: str = "", reason: str = "") -> dict[str, Any]:
    state: dict[str, Any] = {"running": {}}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "message": message, "reason": reason}}
    return {
        "metadata": {"name": "p"},
        "status": {"containerStatuses": [{"name": "stage", "state": state}]},
    }


def test_running_job() -> None:
    job = observe_job(JOB)
    assert (job.name, job.stage, job.generation, job.phase) == (
        "demo-prune-g2",
        "prune",
        2,
        JobPhase.active,
    )
    assert job.fingerprint == "f" * 64 and job.active == 1
    assert job.start_time == "2026-11-27T07:00:00Z"
    assert owned_by(JOB, "u1") and not owned_by(JOB, "u2")


def test_finished_jobs() -> None:
    done = {
        **JOB,
        "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    }
    assert observe_job(done).phase == JobPhase.succeeded
    failed_cond = {
        "type": "Failed",
        "status": "True",
        "reason": "BackoffLimitExceeded",
        "message": "Job has reached the specified backoff limit",
    }
    failed = observe_job({**JOB, "status": {"failed": 3, "conditions": [failed_cond]}})
    assert failed.phase == JobPhase.failed and failed.failed == 3
    assert failed.failure.startswith("BackoffLimitExceeded: Job has reached")


def test_result_from_termination_message() -> None:
    result = {"stage": "prune", "outputs": {"model": "file:///x"}, "durationSeconds": 2.0}
    pods = [pod(1, "boom"), pod(0, json.dumps(result))]
    assert stage_result(pods) == result
    assert stage_result([pod(0, "not json")]) is None
    assert stage_result([pod(None)]) is None


def test_failure_text_has_exit_and_log_tail() -> None:
    text = failure_text("BackoffLimitExceeded", [pod(2, "fallback", "Error")], "line1\nerror: bad")
    assert text.splitlines()[:2] == ["BackoffLimitExceeded", "container exited 2 (Error)"]
    assert text.endswith("log tail:\nline1\nerror: bad")
    # Without a readable log, the termination message (the log tail kept by the kubelet).
    assert failure_text("", [pod(1, "Traceback...")], "").endswith("Traceback...")


def test_latest_progress_line_wins() -> None:
    log = "\n".join(
        [
            PROGRESS_MARKER + json.dumps({"phase": "fine-tune", "epoch": 1, "epochs": 3}),
            "some other output",
            PROGRESS_MARKER + json.dumps({"phase": "fine-tune", "epoch": 2, "epochs": 3, "x": 1}),
            PROGRESS_MARKER + "{broken",
        ]
    )
    assert latest_progress(log) == Progress(phase="fine-tune", epoch=2, epochs=3)
    assert latest_progress("nothing here") is None


def test_merge_patch_deletes_what_is_gone() -> None:
    old = {"state": "Running", "artifacts": {"onnx": "a", "ir": "b"}, "metrics": {"speedup": 2}}
    new = {"state": "Running", "artifacts": {"onnx": "a"}}
    assert merge_patch(old, new) == {"artifacts": {"ir": None}, "metrics": None}
    assert merge_patch(new, new) == {}
    assert merge_patch({"stages": [1, 2]}, {"stages": [1]}) == {"stages": [1]}


def test_status_round_trip_and_mangled_status() -> None:
    status = ModelOptimizationStatus(summary="x")
    assert read_status({"status": dump_status(status)}) == status
    assert read_status({"status": {"state": "Exploded"}}) == ModelOptimizationStatus()
    assert "null" not in json.dumps(dump_status(status))


def test_index_and_timer_filters() -> None:
    assert running_optimizations("ns", "a", {"state": "Running"}) == {"running": "ns/a"}
    assert running_optimizations("ns", "a", {"state": "Waiting"}) == {}
    assert running_keys({"running": ["ns/a"]}) == ["ns/a"] and running_keys(None) == []
    assert unsettled({"state": "Running"}, {"generation": 1})
    assert not unsettled({"state": "Succeeded", "observedGeneration": 1}, {"generation": 1})
    assert unsettled({"state": "Failed", "observedGeneration": 1}, {"generation": 2})


def test_slot_table_claims() -> None:
    table = SlotTable(limit=1)
    table.settle("ns/a", True)
    assert not table.slots([]).free_for("ns/b")
    assert table.slots([]).free_for("ns/a")
    table.settle("ns/a", False)
    assert table.slots([]).free_for("ns/b")
    assert not table.slots(["ns/c"]).free_for("ns/b")


def test_handlers_register() -> None:
    registry = kopf.OperatorRegistry()
    rt = Runtime(config=OperatorConfig(), kube=None, table=SlotTable(1))  # type: ignore[arg-type]
    register(registry, rt)
    ids = {h.id for h in registry._changing.get_all_handlers()}
    assert {"create", "update/spec", "resume", "release", "artifacts"} <= ids
    assert [h.id for h in registry._spawning.get_all_handlers()] == ["progress"]
    assert [h.id for h in registry._watching.get_all_handlers()] == ["job"]
    assert [h.id for h in registry._indexing.get_all_handlers()] == [
        "running_optimizations",
        "shared_stages",
    ]


def test_free_slots_go_to_the_waiting_in_arrival_order() -> None:
    from kubeslim.planner import Slots

    slots = Slots(limit=2, holders=frozenset({"ns/a"}), queue=("ns/b", "ns/c"))
    assert slots.free_for("ns/a") and slots.free_for("ns/b")
    assert not slots.free_for("ns/c") and not slots.free_for("ns/new")  # behind b
    assert Slots(limit=3, holders=frozenset({"ns/a"}), queue=("ns/b",)).free_for("ns/c")


def test_slot_table_queues_and_admits_first_come_first_served() -> None:
    table = SlotTable(limit=1)
    table.settle("ns/a", True)
    for key in ("ns/b", "ns/c"):
        table.settle(key, False, waits=True)
    assert table.queue == ["ns/b", "ns/c"]
    assert not table.admissible("ns/b", []) and not table.admissible("ns/c", [])
    assert table.admissible("ns/a", [])  # not queued: a look can change things
    table.settle("ns/a", False)
    # a's status still says Running in kopf's index for a moment: it must not count.
    assert table.admissible_waiting(["ns/a"]) == ["ns/b"]
    table.settle("ns/b", True)
    assert table.queue == ["ns/c"] and table.admissible_waiting(["ns/a"]) == []


def test_a_queued_resource_costs_no_api_call_until_a_slot_frees() -> None:
    from kubeslim.handlers.handle_timer_optimization import on_timer

    class NoCalls:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"API call {name} while queued")

    table = SlotTable(limit=1)
    table.settle("ns/a", True)
    table.settle("ns/b", False, waits=True)
    rt = Runtime(config=OperatorConfig(), kube=NoCalls(), table=table)  # type: ignore[arg-type]
    on_timer(namespace="ns", name="b", running_optimizations={"running": ["ns/a"]}, rt=rt)


def test_the_job_watch_is_filtered_by_the_api_server() -> None:
    from kubeslim.handlers.handle_startup import configure_kopf

    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    selectors = list(settings.watching.label_selectors.items())
    assert [value for _, value in selectors] == [
        "app.kubernetes.io/managed-by=kubeslim,kubeslim.dev/modeloptimization"
    ]


def test_metrics_count_states_durations_failures_and_the_queue() -> None:
    import socket
    import urllib.request

    from kubeslim.api.status import StageStatus
    from kubeslim.handlers.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    running = ModelOptimizationStatus(
        state="Running", stages=[StageStatus(name="prune", state="Running")]
    )
    done = ModelOptimizationStatus(
        state="Succeeded",
        stages=[StageStatus(name="prune", state="Succeeded", duration_seconds=42.0)],
    )
    metrics.observe("ns/a", ModelOptimizationStatus(), running)
    metrics.observe("ns/a", running, done)
    metrics.observe("ns/a", done, done)  # no change: nothing counted twice
    failed = ModelOptimizationStatus(state="Failed", current_stage="quantize")
    failed.conditions = set_condition([], "Failed", "True", "JobFailed", "boom", "t")
    metrics.observe("ns/b", running, failed)
    metrics.waiting(3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.serve(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:
        text = rsp.read().decode()
    assert 'kubeslim_optimizations{state="Succeeded"} 1.0' in text
    assert 'kubeslim_optimizations{state="Failed"} 1.0' in text
    assert 'kubeslim_optimizations{state="Running"} 0.0' in text
    assert 'kubeslim_stage_duration_seconds_count{stage="prune"} 1.0' in text
    assert 'kubeslim_stage_duration_seconds_sum{stage="prune"} 42.0' in text
    assert 'kubeslim_stage_failures_total{reason="JobFailed",stage="quantize"} 1.0' in text
    assert "kubeslim_waiting_queue_length 3.0" in text
    metrics.forget("ns/b")
    assert metrics.resources.labels(state="Failed")._value.get() == 0


def test_a_409_from_a_job_of_another_owner_or_spec_clears_the_way() -> None:
    from kubeslim.handlers.reconcile import _clear_the_way

    class Jobs:
        def __init__(self, job: dict[str, Any]) -> None:
            self.job, self.deleted = job, []  # type: list[str]

        def find_job(self, namespace: str, name: str) -> dict[str, Any]:
            return self.job

        def delete_job(self, namespace: str, name: str) -> None:
            self.deleted.append(name)

    def job(uid: str, fingerprint: str) -> dict[str, Any]:
        return {
            "metadata": {
                "name": "m-prune-g1-0a1b2c3d",
                "annotations": {"kubeslim.dev/fingerprint": fingerprint},
                "ownerReferences": [{"uid": uid, "controller": True}],
            }
        }

    cases = [(job("me", "fp"), []), (job("old-namesake", "fp"), ["m-prune-g1-0a1b2c3d"])]
    cases.append((job("me", "other-spec"), ["m-prune-g1-0a1b2c3d"]))
    for existing, deleted in cases:
        kube = Jobs(existing)
        rt = Runtime(config=OperatorConfig(), kube=kube, table=SlotTable(1))  # type: ignore[arg-type]
        _clear_the_way(rt, "ns", "m-prune-g1-0a1b2c3d", "me", "fp")
        assert kube.deleted == deleted


def test_failure_text_says_what_happened_to_the_pod() -> None:
    evicted = {
        "status": {
            "phase": "Failed",
            "reason": "Evicted",
            "message": "The node was low on resource: ephemeral-storage.",
            "containerStatuses": [
                {
                    "name": "stage",
                    "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown"}},
                }
            ],
        }
    }
    text = failure_text("BackoffLimitExceeded", [evicted], "")
    assert "Pod Evicted: The node was low on resource: ephemeral-storage." in text
    bad = {
        "status": {
            "containerStatuses": [
                {
                    "name": "stage",
                    "state": {
                        "terminated": {
                            "exitCode": 2,
                            "message": '{"stage": "prune", "error": "spec.model.checkpoint: no '
                            'such file: /x.pt", "exitCode": 2}',
                        }
                    },
                }
            ]
        }
    }
    text = failure_text("PodFailurePolicy", [bad], "")
    assert text.splitlines()[0] == "error: spec.model.checkpoint: no such file: /x.pt"


def test_pods_that_cannot_start_are_told_apart() -> None:
    from kubeslim.handlers.observe import pod_blocker

    def waiting(reason: str) -> dict[str, Any]:
        state = {"waiting": {"reason": reason, "message": "m"}}
        return {"status": {"containerStatuses": [{"name": "stage", "state": state}]}}

    assert pod_blocker(waiting("CreateContainerConfigError")) == (
        "CreateContainerConfigError",
        "m",
        True,
    )
    assert pod_blocker(waiting("ImagePullBackOff")) == ("ImagePullBackOff", "m", False)
    assert pod_blocker(waiting("ContainerCreating")) is None
    unschedulable = {
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes: Insufficient nvidia.com/gpu",
                }
            ]
        }
    }
    assert pod_blocker(unschedulable) == (
        "Unschedulable",
        "0/1 nodes: Insufficient nvidia.com/gpu",
        False,
    )


def test_a_waiting_resource_keeps_its_place_in_the_queue(monkeypatch: Any) -> None:
    from kubeslim.handlers.reconcile import reconcile
    from kubeslim.planner import Action

    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)  # no operator to post

    class Kube:
        def __init__(self) -> None:
            self.patches: list[dict[str, Any]] = []

        def get_optimization(self, namespace: str, name: str) -> dict[str, Any]:
            spec = {
                "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
                "dataset": {"name": "digits"},
                "artifacts": {"uri": "s3://bucket/runs"},
            }
            meta = {"name": name, "namespace": namespace, "uid": "u", "generation": 1}
            return {"metadata": meta, "spec": spec}

        def list_jobs(self, namespace: str, owner: str) -> list[dict[str, Any]]:
            return []

        def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
            self.patches.append(patch)

    table = SlotTable(limit=1)
    table.settle("ns/holder", True)
    rt = Runtime(config=OperatorConfig(max_concurrent=1), kube=Kube(), table=table)  # type: ignore[arg-type]
    decided = reconcile(rt, "ns", "b")
    assert decided is not None and decided.action == Action.wait_for_capacity
    assert table.queue == ["ns/b"] and not table.admissible("ns/b", [])


def test_the_arrival_of_a_job_this_process_created_reconciles_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubeslim.constants import LABEL_NAME
    from kubeslim.handlers import handle_event_job

    looked: list[str] = []
    monkeypatch.setattr(
        handle_event_job, "reconcile", lambda rt, ns, name, running: looked.append(name)
    )
    rt = Runtime(config=OperatorConfig(), kube=None, table=SlotTable(1))  # type: ignore[arg-type]
    rt.just_created("ns", "demo-prune-g1")

    def event(type_: str | None) -> None:
        handle_event_job.on_job_event(
            namespace="ns", name="demo-prune-g1", type=type_, labels={LABEL_NAME: "demo"},
            running_optimizations=None, rt=rt,
        )  # fmt: skip

    event("ADDED")  # our own create coming back: the status says it already
    assert looked == []
    event("MODIFIED")  # the Job controller's news
    event("ADDED")  # once only: a watch restart's ADDED is looked at
    event(None)  # the initial listing after a restart
    assert looked == ["demo", "demo", "demo"]
