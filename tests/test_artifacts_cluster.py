"""Artifacts on the control plane (issue 13 item 15): two resources with the same inputs
run one set of Jobs, and deleting a resource that asks for it deletes its artifacts.

The stand-in stage (tests/cluster/standin.py) writes under the shared claim; with
"share" its results name a shared-cache entry as the real stage's do.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.test_operator_cluster import ARTIFACTS, ARTIFACTS_PATH, SPEC, Env, _wait, env

pytestmark = pytest.mark.cluster
__all__ = ["env"]  # the operator and namespace of test_operator_cluster, started here again

# Classes no other test's resource has: these resources share with nobody else.
SHARED_SPEC: dict[str, Any] = {**SPEC, "model": {**SPEC["model"], "numClasses": 7}}


def gone(env: Env, name: str) -> bool:
    try:
        env.get(name)
    except ApiException as err:
        return err.status == 404
    return False


def test_two_resources_with_the_same_inputs_run_one_set_of_jobs(env: Env) -> None:
    env.create("share-a", SHARED_SPEC, {"share": True})
    env.wait_state("share-a", "Succeeded")
    env.create("share-b", SHARED_SPEC, {})
    status = env.wait_state("share-b", "Succeeded")

    assert env.jobs("share-a") == [
        f"share-a-{s}-g1" for s in ("benchmark", "convert", "prune", "quantize")
    ]
    assert env.job_names("share-b") == []  # nothing ran for the second
    for stage in status["stages"]:
        assert stage["state"] == "Succeeded"
        assert stage["message"].startswith(f"reused: {env.namespace}/share-a ran it"), stage
        assert stage["cacheKey"].startswith(f"{stage['name']}/")
    assert env.condition("share-b", "Pruned")["reason"] == "Reused"
    # Its artifacts are the shared cache's (never deleted with share-a), its metrics share-a's.
    cache = f"{ARTIFACTS_PATH}/cache/prune/{'p' * 64}"
    assert status["artifacts"]["prunedModel"] == f"{cache}/model.pt"
    assert status["metrics"] == env.status("share-a")["metrics"]
    for name in ("share-a", "share-b"):
        env.delete(name)
        _wait(f"{name} to go", lambda n=name: gone(env, n), env.operator)


def test_deletion_with_the_flag_removes_the_resources_artifacts(env: Env) -> None:
    deleting = {**ARTIFACTS, "retention": {"deleteOnResourceDeletion": True}}
    env.create("doomed", {**SHARED_SPEC, "dataset": {"name": "digits", "seed": 5}}, {}, deleting)
    env.create("kept", {**SHARED_SPEC, "dataset": {"name": "digits", "seed": 3}}, {})
    env.wait_state("doomed", "Succeeded")
    env.wait_state("kept", "Succeeded")
    doomed, kept = (env.artifacts / env.namespace / n for n in ("doomed", "kept"))
    assert (doomed / "prune" / "result.json").is_file()
    assert "kubeslim.dev/finalizer" in env.get("doomed")["metadata"]["finalizers"]

    for name in ("doomed", "kept"):
        env.delete(name)
        _wait(f"{name} to go", lambda n=name: gone(env, n), env.operator)

    assert not [p for p in doomed.rglob("*") if p.is_file()], sorted(doomed.rglob("*"))
    assert (kept / "prune" / "result.json").is_file()  # without the flag: left alone
    assert ("ArtifactsDeleted", f"deleted {ARTIFACTS_PATH}/{env.namespace}/doomed") in env.events(
        "doomed"
    )
