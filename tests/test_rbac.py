"""The chart's RBAC against a real control plane: enough, and nothing spare.

The chart is rendered with helm and applied (everything but the operator Deployment);
`kubeslim operator` then runs as a subprocess with the chart's ServiceAccount token and
the chart's ConfigMap as its environment.

- `helm install` runs the operator Pod, which takes up a resource; `helm uninstall` keeps
  the CRD. (That the rules as rendered, cluster scope, take the real stages to Succeeded
  with no denial is tests/test_e2e_node.py's digits run, through the chart's operator Pod.)
- In namespace scope with two replicas (kopf peering on), a stand-in stage lets a
  scenario touch every permission: watch, finalizer, status, progress from the Pod log,
  a spec edit that deletes a running stale Job, results from the Pods, Events. With every
  rule it completes; with any one verb removed it does not: the operator logs a 403, exits,
  or stops short of a milestone (bounded, no timing asserted). The namespace-scope control
  and the variants run side by side, each in its own namespace with its own operator
  (most of a variant is waiting for Pods, or for an operator that stopped short), so the
  control passes under the same load the variants see.

The stand-in stage is tests/cluster/standin.py (in its image on the real node, the
`standin_stage` fixture); the artifacts are a claim the stage Pods mount, which the test
reads and writes through `Cluster.pvc_dir`, so these tests need the control plane the
tests start: with --kubeconfig they skip.
"""

from __future__ import annotations

import contextlib
import copy
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.plugin import ProjectImages, StandIn
from tests.cluster.rig import free_port
from tests.tools.chart import CHART, find, helm, one, render

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "kubeslim.dev", "v1alpha1", "modeloptimizations"
RELEASE_NS = "kubeslim-rbac"
# How long one variant may take before it counts as stuck; generous on 2 busy cores.
VARIANT_BOUND_S = 90.0
# A denial in the operator's log: kopf's APIForbiddenError, the client's "(403)\nReason:
# Forbidden", kopf's "Code: 403" for Events (not a bare 403: timestamps have milliseconds).
FORBIDDEN = re.compile(r"[Ff]orbidden|\(403\)|Code: 403")

STANDIN: dict[str, Any] = {
    "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
    "dataset": {"name": "digits"},
    "execution": {"backoffLimit": 0},
}


# ---- the chart on the cluster --------------------------------------------------------


def _rules_of(docs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Every (group, resource, verb) the chart grants, in order."""
    roles = find(docs, "ClusterRole") or find(docs, "Role")
    return [
        (group, resource, verb)
        for rule in roles[0]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


def _without(docs: list[dict[str, Any]], drop: tuple[str, str, str]) -> list[dict[str, Any]]:
    """The rendered chart with one verb taken out of its Role/ClusterRole (a rule left
    without verbs goes)."""
    out = copy.deepcopy(docs)
    group, resource, verb = drop
    for role in find(out, "ClusterRole") + find(out, "Role"):
        rules = []
        for rule in role["rules"]:
            if rule["apiGroups"] == [group] and rule["resources"] == [resource]:
                rule["verbs"] = [v for v in rule["verbs"] if v != verb]
            if rule["verbs"]:
                rules.append(rule)
        role["rules"] = rules
    return out


class Install:
    """One rendered, applied release and the operator running as its ServiceAccount."""

    def __init__(self, cluster: Any, docs: list[dict[str, Any]], work: Path) -> None:
        from kubernetes import client

        self.cluster = cluster
        self.docs = docs
        self.work = work
        api = cluster.api_client()
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.operator: Any = None
        # The operator Pod is replaced by the subprocess below; a PDB would select nothing.
        applied = [d for d in docs if d["kind"] not in ("Deployment", "PodDisruptionBudget")]
        cluster.apply(applied)
        sa = one(docs, "ServiceAccount")["metadata"]
        self.kubeconfig = cluster.service_account_kubeconfig(sa["namespace"], sa["name"])
        self.settings: dict[str, str] = dict(one(docs, "ConfigMap")["data"])

    def start(self, stages: dict[str, str], priority: int = 0, name: str = "rbac") -> None:
        """Run the operator with `stages`: its stage images and command (KUBESLIM_*);
        `name` names its log file (operators running side by side each need their own)."""
        port = free_port()
        env = {
            **self.settings,
            **stages,
            "KUBESLIM_PROGRESS_INTERVAL": "1",
            "KUBESLIM_HEALTH_PORT": str(port),
            "KUBESLIM_PRIORITY": str(priority),
            "PYTHONUNBUFFERED": "1",
        }
        self.operator = self.cluster.start_process(
            [sys.executable, "-m", "kubeslim", "operator"],
            env=env,
            kubeconfig=self.kubeconfig,
            name=f"kubeslim-operator-{name}",
        )

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()

    def log(self) -> str:
        return str(self.operator.output()) if self.operator is not None else ""

    def create(self, namespace: str, name: str, spec: dict[str, Any], artifacts: Path) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelOptimization",
            "metadata": {"name": name, "namespace": namespace},
            # A local path works in stage Pods only through a volume they all mount.
            "spec": {**spec, "artifacts": SHARED_ARTIFACTS},
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return dict(obj.get("status") or {})

    def jobs(self, namespace: str, name: str) -> list[str]:
        selector = f"kubeslim.dev/modeloptimization={name}"
        items = self.batch.list_namespaced_job(namespace, label_selector=selector).items
        return sorted(j.metadata.name for j in items)

    def forget(self, namespace: str, name: str) -> None:
        """Delete the resource even with no operator left to drop its finalizer."""
        with contextlib.suppress(Exception):
            self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"metadata": {"finalizers": None}},
                _content_type="application/merge-patch+json",
            )
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


class Broken(Exception):
    """The operator could not go on: the reason names what showed it."""


def _until(what: str, install: Install, condition: Callable[[], bool], deadline: float) -> None:
    """Wait for `condition`, stopping early on a 403 in the log or an exited operator."""
    while not condition():
        log = install.log()
        forbidden = [line for line in log.splitlines() if FORBIDDEN.search(line)]
        if forbidden:
            raise Broken(f"403 while waiting for {what}: {forbidden[0][:300]}")
        if install.operator.returncode is not None:
            raise Broken(f"operator exited ({install.operator.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise Broken(f"no {what} within {VARIANT_BOUND_S:g} s")
        time.sleep(0.25)


def _stage_progress(status: dict[str, Any]) -> bool:
    return any(s.get("progress") for s in status.get("stages") or [])


SHARED_ARTIFACTS = {"uri": "/kubeslim-artifacts", "volume": {"claimName": "artifacts"}}


def shared(cluster: Any, namespace: str) -> Path:
    """Where the Pods' artifacts volume lives on the host (the fake kubelet's claim folder)."""
    return Path(cluster.pvc_dir(namespace, "artifacts"))


def run_scenario(install: Install, namespace: str, artifacts: Path) -> None:
    """Touch every permission once; raises Broken at the first thing that does not happen."""
    deadline = time.monotonic() + VARIANT_BOUND_S
    name = "probe"
    folder = StandIn.prepare(artifacts, namespace, name, {"gate": ["prune"]})
    _until("the operator's start", install, lambda: "watching" in install.log(), deadline)
    install.create(namespace, name, STANDIN, artifacts)
    # Finalizer and status patched; prune Job created; its progress read from the Pod log.
    _until(
        "prune progress in status",
        install,
        lambda: _stage_progress(install.status(namespace, name)),
        deadline,
    )
    # A spec edit while prune runs: the stale Job is deleted and a new one made.
    install.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        {"spec": {"pruning": {"target": {"filterRate": 0.4}}}},
        _content_type="application/merge-patch+json",
    )
    _until(
        "the stale prune Job deleted",
        install,
        lambda: f"{name}-prune-g1" not in install.jobs(namespace, name),
        deadline,
    )
    (folder / "release-prune").touch()

    def succeeded() -> bool:
        status = install.status(namespace, name)
        return status.get("state") == "Succeeded" and status.get("observedGeneration") == 2

    _until("Succeeded (generation 2)", install, succeeded, deadline)
    events = install.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    ).items
    forbidden = [line for line in install.log().splitlines() if FORBIDDEN.search(line)]
    if forbidden:
        raise Broken(f"403 on the way: {forbidden[0][:300]}")
    if not events:
        raise Broken("no Events posted")


# ---- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crds_applied(k8s_cluster: Any) -> Any:
    docs = render({"replicas": 2})
    k8s_cluster.apply(find(docs, "CustomResourceDefinition"))
    k8s_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NS}})
    return k8s_cluster


@pytest.fixture(scope="module")
def standin_command(crds_applied: Any, standin_stage: StandIn) -> dict[str, str]:
    """The operator settings that run the stand-in stage in its image."""
    return standin_stage.operator_env()


def _namespace(cluster: Any, name: str) -> str:
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def _slug(drop: tuple[str, str, str]) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{drop[1]}-{drop[2]}").strip("-")


# The variants: every verb the chart grants in namespace scope with peering on.
PEERING_VALUES = {"rbac.scope": "namespace", "replicas": 2}


def _variants() -> list[tuple[str, str, str]]:
    """Rendered at collection time for the test ids; without helm there are none (and
    the other tests here skip, or fail in CI, saying why)."""
    try:
        docs = render({**PEERING_VALUES, "rbac.namespaces": ["x"]}, include_crds=False)
    except BaseException:  # helm missing: the fixtures will skip or fail with the reason
        return []
    # Services: only a multi-worker prune touches them (its rendezvous Service), and its
    # Pods run torchrun, which the stand-in's image (no torch) cannot; the verbs' calls
    # are in tests/test_job_distributed.py and a real run in tests/test_e2e_distributed.py.
    return [rule for rule in _rules_of(docs) if rule[1] != "services"]


VARIANTS = _variants()


# ---- the tests -----------------------------------------------------------------------


@pytest.mark.timeout(3600)  # an operator image build when the cache misses
def test_helm_install_runs_the_operator_pod_and_uninstall_keeps_the_crd(
    crds_applied: Any, request: pytest.FixtureRequest
) -> None:
    """`helm install` for real: the chart's Deployment runs the operator as a Pod (in the
    operator image on the real node; the fake kubelet runs `kubeslim operator` from the
    checkout), which takes up a ModelOptimization; `helm uninstall` removes the operator
    and its RBAC but leaves the CRD and the resources."""
    from kubernetes import client

    cluster = crds_applied
    if not cluster.is_rig and cluster.node is None:
        pytest.skip("needs the test control plane: a real cluster would pull the images")
    image: list[str] = []
    if cluster.node is not None:
        images: ProjectImages = request.getfixturevalue("project_image")
        repository, tag = images.tag("operator").rsplit(":", 1)
        image = ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                 "--set", "image.pullPolicy=Never"]  # fmt: skip
    namespace = _namespace(cluster, "rbac-helm")
    kubeconfig = str(cluster.kubeconfig)
    installed = helm(
        "install",
        "rbac-helm",
        str(CHART),
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        RELEASE_NS,
        "--set",
        "rbac.scope=namespace",
        "--set",
        f"rbac.namespaces={{{namespace}}}",
        "--set",
        f"operator.healthPort={free_port()}",
        *image,
    )
    assert "kubeslim 0.1.0 is installed as rbac-helm-kubeslim" in installed.stdout
    assert f"kubectl get modeloptimizations -n {namespace} -w" in installed.stdout
    assert f"It serves ModelOptimizations in: {namespace}." in installed.stdout
    api = cluster.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    install = Install.__new__(Install)  # only the API helpers, nothing applied
    install.custom, install.batch, install.core = (
        client.CustomObjectsApi(api),
        client.BatchV1Api(api),
        core,
    )
    try:
        install.create(namespace, "by-pod", STANDIN, shared(cluster, namespace))
        deadline = time.monotonic() + VARIANT_BOUND_S
        # The operator Pod adopts it: finalizer, then the first stage's Job.
        while not install.jobs(namespace, "by-pod"):
            pods = core.list_namespaced_pod(
                RELEASE_NS, label_selector="app.kubernetes.io/instance=rbac-helm"
            ).items
            phases = [p.status.phase for p in pods]
            assert "Failed" not in phases, phases
            assert time.monotonic() < deadline, f"no Job from the operator Pod; Pods: {phases}"
            time.sleep(0.5)
        assert apps.read_namespaced_deployment("rbac-helm-kubeslim", RELEASE_NS)
    finally:
        helm(
            "uninstall",
            "rbac-helm",
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            RELEASE_NS,
            "--wait",
            "--timeout",
            "60s",
        )
    assert not apps.list_namespaced_deployment(
        RELEASE_NS, label_selector="app.kubernetes.io/instance=rbac-helm"
    ).items
    assert (
        not client.RbacAuthorizationV1Api(api)
        .list_namespaced_role(namespace, label_selector="app.kubernetes.io/instance=rbac-helm")
        .items
    )
    ext = client.ApiextensionsV1Api(api)
    assert ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")  # kept
    assert install.status(namespace, "by-pod") is not None  # and so is the resource
    install.forget(namespace, "by-pod")


# The namespace-scope control and the variants, side by side: each is an operator process
# and a few stand-in Pods, mostly waiting (for Pods, or for an operator that stopped
# short to reach the bound). The cluster-scope control runs alone: its operator would
# take up every other namespace's resources.
SIDE_BY_SIDE = 4
FINALIZERS_UPDATE = ("kubeslim.dev", "modeloptimizations/finalizers", "update")
Drop = tuple[str, str, str]


@dataclass(frozen=True)
class Outcome:
    """How the scenario went with one set of rules: `broken` is the reason it stopped
    (None: it completed); `error`, anything else that went wrong (a skip included),
    raised again in the test it belongs to."""

    broken: str | None = None
    log: str = ""
    tail: str = ""
    error: BaseException | None = None


# Namespaces, rendering and applying the chart one at a time: the shared dynamic client
# may refresh its discovery cache on a first apply of a kind.
_SETUP = threading.Lock()


def _scenario_with(
    cluster: Any, stages: dict[str, str], drop: Drop | None, work: Path, scope: str = "namespace"
) -> Outcome:
    """The chart with `drop` taken out of its rules (None: every rule), installed in a
    namespace of its own, and the scenario run by its operator."""
    slug = _slug(drop) if drop else f"all-{scope}"
    with _SETUP:
        namespace = _namespace(cluster, f"rbac-{slug}"[:63])
        docs = render(
            {**PEERING_VALUES, "rbac.scope": scope, "rbac.namespaces": [namespace]},
            release=f"rbac-{slug}"[:40].rstrip("-"),
            namespace=RELEASE_NS,
            include_crds=False,
        )
        if drop is None:
            peering = {"namespace": "kopfpeerings", "cluster": "clusterkopfpeerings"}[scope]
            assert ("kopf.dev", peering, "patch") in _rules_of(docs)
        else:
            docs = _without(docs, drop)
            assert drop not in _rules_of(docs)
        install = Install(cluster, docs, work)
        if drop == FINALIZERS_UPDATE:
            _skip_unless_owner_references_are_enforced(install, namespace)
        artifacts = shared(cluster, namespace)
    install.start(stages, priority=100, name=slug)
    broken = None
    try:
        run_scenario(install, namespace, artifacts)
    except Broken as err:
        broken = str(err)
    finally:
        install.stop()
        install.forget(namespace, "probe")
    return Outcome(broken, install.log(), install.operator.tail())


def _selected(items: list[pytest.Item]) -> list[Drop | None]:
    """The cases this session runs side by side: the selected variants, and None for the
    namespace-scope control when it is selected (so `-k jobs-create` runs one)."""
    cases: list[Drop | None] = []
    for item in items:
        params = getattr(item, "callspec", None)
        if params is None or getattr(item, "module", None) is not sys.modules[__name__]:
            continue
        if "drop" in params.params:
            cases.append(params.params["drop"])
        elif params.params.get("scope") == "namespace":
            cases.append(None)
    return cases


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest,
    crds_applied: Any,
    standin_command: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[Drop | None, Outcome]:
    cases = _selected(request.session.items)
    works = [tmp_path_factory.mktemp("rbac") for _ in cases]

    def run(drop: Drop | None, work: Path) -> Outcome:
        try:
            return _scenario_with(crds_applied, standin_command, drop, work)
        except BaseException as err:  # a skip or a failure, for its own test to raise
            return Outcome(error=err)

    with ThreadPoolExecutor(SIDE_BY_SIDE, thread_name_prefix="rbac-variant") as pool:
        return dict(zip(cases, pool.map(run, cases, works), strict=True))


# The side-by-side run counts against the first of these tests to ask for it.
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("scope", ["namespace", "cluster"])
def test_all_rules_pass_the_scenario(
    request: pytest.FixtureRequest,
    crds_applied: Any,
    standin_command: dict[str, str],
    tmp_path: Path,
    scope: str,
) -> None:
    """The control: with every rule the scenario completes, so a variant's failure is the
    missing verb's doing. Both scopes, peering on (a KopfPeering or a ClusterKopfPeering)."""
    if scope == "namespace":
        outcome = request.getfixturevalue("outcomes")[None]
    else:
        outcome = _scenario_with(crds_applied, standin_command, None, tmp_path, scope)
    if outcome.error is not None:
        raise outcome.error
    if outcome.broken is not None:
        pytest.fail(f"{outcome.broken}\noperator log:\n{outcome.tail}")


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("drop", VARIANTS, ids=[_slug(v) for v in VARIANTS])
def test_removing_one_verb_breaks_the_operator(
    outcomes: dict[Drop | None, Outcome], drop: Drop
) -> None:
    outcome = outcomes[drop]
    if outcome.error is not None:
        raise outcome.error
    assert outcome.broken is not None, f"completed without {drop}:\n{outcome.tail}"
    print(f"without {drop}: {outcome.broken}")
    if outcome.broken.startswith("403"):
        # The API server's denial names the very verb and resource taken away.
        _group, resource, verb = drop
        denial = re.compile(rf'cannot {verb} resource \\*"{re.escape(resource)}\\*"')
        if resource.endswith("/finalizers"):  # OwnerReferencesPermissionEnforcement's words
            denial = re.compile(r"cannot set blockOwnerDeletion .* can't set finalizers on")
        assert denial.search(outcome.log), outcome.tail


def _skip_unless_owner_references_are_enforced(install: Install, namespace: str) -> None:
    """modeloptimizations/finalizers is needed only where the API server runs the
    OwnerReferencesPermissionEnforcement admission plugin (off by default): ask it with a
    dry-run Job, as the operator's ServiceAccount, that blocks its owner's deletion."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    owner = install.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelOptimization",
            "metadata": {"name": "owner-probe"},
            "spec": STANDIN,
        },
    )
    reference = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelOptimization",
        "name": "owner-probe",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "owner-probe", "ownerReferences": [reference]},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "none", "command": ["true"]}],
                }
            }
        },
    }
    as_operator = client.BatchV1Api(
        config.new_client_from_config(config_file=str(install.kubeconfig))
    )
    try:
        as_operator.create_namespaced_job(namespace, job, dry_run="All")
    except ApiException as err:
        assert err.status == 403, err
        return
    finally:
        install.forget(namespace, "owner-probe")
    pytest.skip(
        "this API server does not run OwnerReferencesPermissionEnforcement, so "
        "modeloptimizations/finalizers update is not needed here"
    )
