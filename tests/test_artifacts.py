"""Artifact retention and reuse across runs (issue 13 item 15), locally and on S3."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kubeslim.api.status import ModelOptimizationStatus, Reason, State
from kubeslim.constants import LABEL_NAME
from kubeslim.executors.cleanup import build_cleanup_job
from kubeslim.handlers.observe import dump_status
from kubeslim.planner import Action, ObservedJob, PlanInput, plan
from kubeslim.planner.model import SharedStage
from kubeslim.planner.shared import shared_for, shared_stages
from kubeslim.planner.status import find_condition
from kubeslim.stages.pipeline import spec_fingerprints
from kubeslim.store import open_store
from kubeslim.store.shared import HISTORY, cache_store, prune_versions, retain_order
from tests.pipeline_helpers import kubeslim, manifest, write
from tests.s3.plugin import S3Server
from tests.test_job_builder import CONFIG, OWNER
from tests.test_planner import SPEC, World, spec_of
from tests.test_s3_pipeline import admin_store

REPO = Path(__file__).resolve().parent.parent
TINY = {
    "model": {
        "entryPoint": "tests.s3.tiny_model:tiny_cnn",
        "numClasses": 10,
        "inputShape": [1, 8, 8],
    },
    "dataset": {"name": "digits", "calibrationSize": 32},
    "pruning": {"enabled": False},
    "quantization": {"enabled": False},
    "benchmark": {"enabled": False},
}


def stage(tmp_path: Path, name: str, spec_file: Path, root: str, **env: str) -> dict[str, Any]:
    """`kubeslim stage NAME` in its own process, as a Job runs it; its compact result."""
    done = kubeslim(
        "stage", name, "--manifest", str(spec_file), "--artifacts", root, "--progress", "none",
        env={"KUBESLIM_CACHE": str(tmp_path / "inputs"), "PYTHONPATH": str(REPO), **env},
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("KUBESLIM_RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("KUBESLIM_RESULT "))
    return result


def test_two_runs_with_the_same_inputs_prune_once(tmp_path: Path) -> None:
    shared = tmp_path / "runs"
    specs = {
        n: write(
            tmp_path / f"{n}.yaml",
            manifest(
                n,
                artifacts={"uri": str(shared)},
                quantization={"enabled": False},
                benchmark={"enabled": False},
            ),
        )
        for n in ("first", "second")
    }

    # As on a cluster: each resource below <artifacts.uri>/<namespace>/<name>.
    done = kubeslim("run", str(specs["first"]), "--artifacts", str(shared / "ml" / "first"))
    assert done.returncode == 0, done.stderr[-3000:]
    again = kubeslim("run", str(specs["second"]), "--artifacts", str(shared / "ml" / "second"))
    assert again.returncode == 0, again.stderr[-3000:]

    first, second = (shared / "ml" / n for n in ("first", "second"))
    made = json.loads((first / "prune" / "result.json").read_text())
    copied = json.loads((second / "prune" / "result.json").read_text())
    # The second run's prune is the first run's, copied from the shared cache, not recomputed.
    assert copied["fingerprint"] == made["fingerprint"] and copied["shared"] is True
    assert made["shared"] is False
    assert copied["metrics"] == made["metrics"]
    entry = shared / "cache" / "prune" / made["fingerprint"]
    assert (entry / "result.json").is_file()
    # ... and self-contained: its outputs are its own copies below its own root.
    for key in copied["outputs"].values():
        assert (second / key).is_file()
        assert (second / key).read_bytes() == (first / key).read_bytes()
    assert "reused" in again.stderr.split("prune", 1)[1].splitlines()[0]
    # The convert Job of the second run reads the adopted prune result like its own.
    assert json.loads((second / "convert" / "result.json").read_text())["shared"] is True


def test_retention_keeps_the_newest_fingerprints_of_a_stage(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    fingerprints = []
    for classes in (10, 11, 12):
        spec = {**TINY, "model": {**TINY["model"], "numClasses": classes}}
        spec["artifacts"] = {"uri": str(root), "retention": {"keepFingerprints": 2}}
        path = write(tmp_path / "spec.yaml", {**manifest("keep"), "spec": spec})
        fingerprints.append(stage(tmp_path, "convert", path, str(root))["fingerprint"][:16])

    kept = sorted({p.parent.name for p in (root / "convert").glob("*/*") if p.is_file()})
    assert kept == sorted(fingerprints[1:])  # the oldest went, the current and one before stay
    assert json.loads((root / "convert" / HISTORY).read_text()) == fingerprints[1:]
    result = json.loads((root / "convert" / "result.json").read_text())
    assert result["fingerprint"][:16] == fingerprints[2]
    # The shared cache keeps its own (larger) number of entries: all three here.
    assert len(list((root / "cache" / "convert").glob("*/result.json"))) == 3
    assert sorted(p.name for p in (root / "convert").iterdir() if p.is_dir()) == kept


def test_prune_versions_orders_by_history_and_leaves_other_folders(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    versions = ["a" * 16, "b" * 16, "c" * 16, "d" * 16]
    for v in versions:
        store.write_bytes(f"prune/{v}/model.pt", b"x")
    store.write_bytes("select/measure/m.json", b"{}")
    store.write_bytes("prune/result.json", b"{}")
    for v in ("d" * 16, "a" * 16):  # written in this order; b and c were never recorded
        retain_order(store, "prune", v)

    assert prune_versions(store, "prune", 0) == []  # 0 keeps everything
    assert prune_versions(store, "prune", 2) == ["b" * 16, "c" * 16]  # unrecorded = oldest
    assert prune_versions(store, "prune", 1) == ["d" * 16]
    assert store.list_keys("prune") == [
        "prune/aaaaaaaaaaaaaaaa/model.pt",
        "prune/history.json",
        "prune/result.json",
    ]
    assert store.exists("select/measure/m.json")


@pytest.mark.s3
def test_runs_with_the_same_inputs_share_convert_on_s3(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.create_bucket()
    uri = f"s3://{bucket}/runs"
    spec = {**TINY, "artifacts": {"uri": uri}}
    path = write(tmp_path / "spec.yaml", {**manifest("tiny"), "spec": spec})
    env = {**{k: v for k, v in os.environ.items() if k.startswith("AWS_")}, **s3_server.env()}

    made = stage(tmp_path, "convert", path, f"{uri}/ml/a", **env)
    copied = stage(tmp_path, "convert", path, f"{uri}/ml/b", **env)

    assert made["reused"] is False and copied["reused"] is True
    assert copied["fingerprint"] == made["fingerprint"]
    store = admin_store(s3_server, uri, monkeypatch)
    assert store.exists(f"cache/convert/{made['fingerprint']}/result.json")
    for key in copied["outputs"].values():
        assert store.exists(f"ml/b/{key}")
        assert store.read_bytes(f"ml/b/{key}") == store.read_bytes(f"ml/a/{key}")


def test_the_planner_reuses_another_resources_stages_without_a_job() -> None:
    spec = spec_of()
    first = World(spec)
    for _ in range(10):  # the first resource runs every stage; each Job's result names its entry
        decided = first.step()
        if decided.terminal:
            break
        job = first.running(decided.stage or "")
        first.finish(job.stage)
        done = first.jobs[job.name]
        key = f"{job.stage}/{job.stage[0] * 64}"
        first.jobs[job.name] = replace(done, result={**(done.result or {}), "cache_key": key})
    assert first.status.state == State.succeeded
    offered = shared_stages("ns", "demo", SPEC, dump_status(first.status))
    index = {k: [v] for k, v in offered.items()}  # what kopf's index holds: key -> values
    assert {k[1] for k in index} == {"prune", "convert", "quantize", "benchmark"}

    shared = shared_for(index, SPEC["artifacts"]["uri"], spec_fingerprints(spec), "ns/second")
    second = plan(
        PlanInput(name="second", namespace="ns", generation=1, spec=spec,
                  status=ModelOptimizationStatus(), shared=shared, now="2026-11-27T08:00:00Z")
    )  # fmt: skip

    assert second.action == Action.succeeded and not second.create  # one Job set for both
    prune = next(s for s in second.status.stages if s.name == "prune")
    assert prune.message.startswith("reused: ns/demo ran it with the same inputs")
    assert prune.cache_key == f"prune/{'p' * 64}"
    condition = find_condition(second.status.conditions, "Pruned")
    assert condition is not None and condition.reason == Reason.reused
    # Its artifacts are the shared cache's, which deleting the first resource leaves alone.
    assert (
        second.status.artifacts.pruned_model == f"s3://bucket/runs/cache/prune/{'p' * 64}/model.pt"
    )
    assert second.status.metrics == first.status.metrics
    # Its own resource never offers itself, and another artifacts.uri shares nothing.
    assert shared_for(index, SPEC["artifacts"]["uri"], spec_fingerprints(spec), "ns/demo") == {}
    assert shared_for(index, "s3://other/runs", spec_fingerprints(spec), "ns/second") == {}


def test_a_changed_stage_runs_its_own_job_after_the_shared_ones() -> None:
    spec = spec_of()
    offer = SharedStage(
        owner="ns/demo", cache_key=f"prune/{'p' * 64}", outputs={"model": "model.pt"}
    )
    prune_fp = spec_fingerprints(spec)["prune"]
    decided = plan(
        PlanInput(name="second", namespace="ns", generation=1, spec=spec,
                  status=ModelOptimizationStatus(), shared={("prune", prune_fp): offer})
    )  # fmt: skip
    assert [r.stage for r in decided.create] == ["convert"]  # prune reused, convert runs


def test_the_shared_cache_sits_beside_the_resources_roots(tmp_path: Path) -> None:
    spec_uri = str(tmp_path / "runs")
    below = open_store(f"{spec_uri}/ml/first")
    assert cache_store(spec_uri, below).root == f"file://{tmp_path}/runs/cache"
    assert cache_store(spec_uri, open_store(spec_uri)).root == f"file://{tmp_path}/runs/cache"
    elsewhere = open_store(str(tmp_path / "other"))
    assert cache_store(spec_uri, elsewhere).root == f"file://{tmp_path}/other/cache"
    # An s3:// spec with a local --artifacts needs no S3 credentials for the comparison.
    assert cache_store("s3://bucket/runs", elsewhere).root == f"file://{tmp_path}/other/cache"


def test_the_cleanup_job_runs_clean_with_the_stage_pods_access() -> None:
    spec = spec_of(
        artifacts={
            "uri": "s3://bucket/runs",
            "credentialsSecret": "s3-credentials",
            "retention": {"deleteOnResourceDeletion": True},
        }
    )
    job = build_cleanup_job(spec, OWNER, CONFIG)

    assert job["metadata"]["name"] == "demo-cleanup-0b7c3d2e"
    assert "ownerReferences" not in job["metadata"]  # the resource is on its way out
    assert LABEL_NAME not in job["metadata"]["labels"]  # the operator's Job watch ignores it
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][1:] == ["clean", "--artifacts", "s3://bucket/runs/team-a/demo"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] > 0 and job["spec"]["backoffLimit"] >= 1


class FakeKube:
    """The three Job calls the deletion handler makes, on a Job in a given state."""

    def __init__(self, job: dict[str, Any] | None) -> None:
        self.job, self.created, self.deleted = job, [], []

    def find_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.job

    def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        self.created.append(body["metadata"]["name"])
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        self.deleted.append(name)

    def list_job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return []


def cleanup_job(condition: str | None) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded"}]
    return {"metadata": {"name": "demo-cleanup-0b7c3d2e", "labels": {}},
            "status": {"conditions": conditions if condition else []}}  # fmt: skip


@pytest.mark.parametrize(
    ("job", "waited", "outcome"),
    [
        (None, 0, "waits"),  # the Job is created, then waited for
        (cleanup_job(None), 10, "waits"),
        (cleanup_job("Complete"), 10, "ArtifactsDeleted"),
        (cleanup_job("Failed"), 10, "ArtifactsNotDeleted"),
        (cleanup_job(None), 301, "ArtifactsNotDeleted"),  # bounded: deletion goes on
    ],
)
def test_the_deletion_handler_never_holds_a_resource_for_good(
    job: dict[str, Any] | None, waited: float, outcome: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime

    import kopf

    from kubeslim.handlers import handle_delete_optimization as handler

    events: list[tuple[str, str]] = []
    monkeypatch.setattr(
        kopf, "event", lambda body, type, reason, message: events.append((type, reason))
    )
    kube = FakeKube(job)
    rt = type("Rt", (), {"kube": kube, "config": CONFIG})()
    spec = {
        **SPEC,
        "artifacts": {**SPEC["artifacts"], "retention": {"deleteOnResourceDeletion": True}},
    }
    assert handler.wants_cleanup(spec) and not handler.wants_cleanup(SPEC)

    def delete() -> None:
        handler.on_delete_artifacts(
            body={}, spec=spec, namespace="team-a", name="demo", uid=OWNER.uid,
            runtime=datetime.timedelta(seconds=waited), rt=rt,
        )  # fmt: skip

    if outcome == "waits":
        with pytest.raises(kopf.TemporaryError):
            delete()
        assert events == [] and kube.created == (["demo-cleanup-0b7c3d2e"] if job is None else [])
        return
    delete()  # returns: kopf removes its finalizer and the resource goes
    kind = "Normal" if outcome == "ArtifactsDeleted" else "Warning"
    assert events == [(kind, outcome)]
    assert kube.deleted == (["demo-cleanup-0b7c3d2e"] if waited > 300 else [])


def test_a_retry_after_a_failure_runs_the_shared_stages_as_its_own_jobs() -> None:
    spec = spec_of()
    offer = SharedStage(
        owner="ns/demo", cache_key=f"prune/{'p' * 64}", outputs={"model": "model.pt"}
    )
    world = World(spec)
    shared = {("prune", spec_fingerprints(spec)["prune"]): offer}

    def step() -> Any:
        decided = plan(
            PlanInput(name="demo", namespace="ns", generation=1, spec=spec, status=world.status,
                      jobs=list(world.jobs.values()), shared=shared, retry=world.retry)
        )  # fmt: skip
        world.status = decided.status
        for request in decided.create:
            world.jobs[request.name] = ObservedJob(
                name=request.name, stage=request.stage, fingerprint=request.fingerprint,
                generation=1, retry_round=request.retry_round, active=1,
            )  # fmt: skip
        return decided

    assert [r.stage for r in step().create] == ["convert"]  # prune reused
    # convert fails: say the cache entry was evicted before its Job copied it
    world.fail("convert", "stage 'prune' has no result: run it first")
    assert step().action == Action.failed
    world.retry = "1"
    assert [r.stage for r in step().create] == ["prune"]  # its own prune now, not the cache's
