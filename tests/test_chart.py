"""The Helm chart: lint, render in every mode, Kubernetes schemas, closed values schema.

Runs the real helm (tests/tools/install-helm.sh builds it); skips without it, except in CI.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubeslim.config import OperatorConfig
from tests.tools.chart import (
    CHART,
    ROOT,
    Doc,
    find,
    helm,
    helm_binary,
    kustomize_binary,
    one,
    render,
)

# The newest Kubernetes the installed kubernetes-validate has schemas for.
K8S_VERSION = kubernetes_validate.latest_version()
CUSTOM_GROUPS = ("kubeslim.dev/", "kopf.dev/")
NAMESPACES = ["ml-a", "ml-b"]

VARIANTS: dict[str, dict[str, Any]] = {
    "cluster": {},
    "namespace": {"rbac.scope": "namespace", "rbac.namespaces": NAMESPACES},
    "cluster-peering-pdb": {"replicas": 3, "podDisruptionBudget.enabled": True},
    "namespace-peering": {
        "rbac.scope": "namespace",
        "rbac.namespaces": NAMESPACES,
        "replicas": 2,
        "podDisruptionBudget.enabled": True,
        "podDisruptionBudget.minAvailable": "50%",
    },
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VARIANTS[request.param])


def _config(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap")["data"]
    return data


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_lint_strict(scope: str, replicas: int) -> None:
    flags = ["--set", f"rbac.scope={scope}", "--set", f"replicas={replicas}"]
    proc = helm("lint", "--strict", str(CHART), *flags, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_rendered_manifests_match_kubernetes_schemas(
    variant: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = variant
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            continue  # custom resources: their CRDs are checked by the API server tests
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 6


def test_every_object_carries_the_shared_labels(
    variant: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = variant
    for doc in docs:
        if doc["kind"] == "CustomResourceDefinition":
            continue  # crds/ is not templated
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "kubeslim", doc["kind"]
        assert labels["app.kubernetes.io/part-of"] == "kubeslim", doc["kind"]


def test_rbac_scope_cluster_grants_cluster_wide() -> None:
    docs = render(VARIANTS["cluster"])
    assert not find(docs, "Role") and not find(docs, "RoleBinding")
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubeslim", "namespace": "kubeslim-system"}
    ]
    assert one(docs, "ServiceAccount")["metadata"]["name"] == "kubeslim"
    assert _config(docs)["KUBESLIM_NAMESPACES"] == ""


def test_rbac_scope_namespace_grants_only_the_served_namespaces() -> None:
    docs = render(VARIANTS["namespace"])
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in find(docs, "Role")) == NAMESPACES
    bindings = find(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == NAMESPACES
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == "kubeslim-system"
    assert _config(docs)["KUBESLIM_NAMESPACES"] == ",".join(NAMESPACES)


def test_rbac_scope_namespace_defaults_to_the_release_namespace() -> None:
    docs = render({"rbac.scope": "namespace"}, namespace="team-x")
    assert [r["metadata"]["namespace"] for r in find(docs, "Role")] == ["team-x"]
    assert _config(docs)["KUBESLIM_NAMESPACES"] == "team-x"


def test_one_replica_runs_standalone_and_recreates() -> None:
    docs = render()
    assert _config(docs)["KUBESLIM_PEERING"] == ""
    assert not find(docs, "ClusterKopfPeering") and not find(docs, "KopfPeering")
    assert not find(docs, "PodDisruptionBudget")
    rules = one(docs, "ClusterRole")["rules"]
    assert all("kopf.dev" not in r["apiGroups"] for r in rules)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert _container(docs)["command"] == ["kubeslim"]
    assert _container(docs)["args"] == ["operator"]


def test_replicas_turn_on_cluster_peering_and_pdb() -> None:
    docs = render(VARIANTS["cluster-peering-pdb"])
    peering = _config(docs)["KUBESLIM_PEERING"]
    assert peering == "kubeslim"
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == peering
    rule = [r for r in one(docs, "ClusterRole")["rules"] if r["apiGroups"] == ["kopf.dev"]]
    assert rule == [
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings"],
            "verbs": ["list", "watch", "patch"],
        }
    ]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    # Old Pods stop before new ones start: a 1 -> 2 replica upgrade (standalone -> peering)
    # never runs the old standalone operator beside the new peering ones.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    # Each replica draws its own kopf priority: equal priorities freeze every replica.
    assert "KUBESLIM_PRIORITY" in _container(docs)["args"][0]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    crds = {c["metadata"]["name"] for c in find(docs, "CustomResourceDefinition")}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds


def test_namespace_peering_objects_live_in_each_served_namespace() -> None:
    docs = render(VARIANTS["namespace-peering"])
    peerings = find(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == NAMESPACES
    assert not find(docs, "ClusterKopfPeering")
    for role in find(docs, "Role"):
        assert {
            "apiGroups": ["kopf.dev"],
            "resources": ["kopfpeerings"],
            "verbs": ["list", "watch", "patch"],
        } in role["rules"]
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == "50%"


def test_deployment_probes_health_port_and_runs_locked_down() -> None:
    docs = render({"operator.healthPort": 9191})
    container = _container(docs)
    port = container["ports"][0]
    assert port == {"name": "health", "containerPort": 9191, "protocol": "TCP"}
    assert _config(docs)["KUBESLIM_HEALTH_PORT"] == "9191"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert container["envFrom"] == [
        {"configMapRef": {"name": one(docs, "ConfigMap")["metadata"]["name"]}}
    ]
    assert container["resources"]["limits"]["memory"]


def test_image_digest_wins_over_tag() -> None:
    assert _container(render())["image"] == "ghcr.io/kubeslim/operator:0.1.0"
    digest = "sha256:" + "ab" * 32
    docs = render({"image.digest": digest, "image.tag": "ignored"})
    assert _container(docs)["image"] == f"ghcr.io/kubeslim/operator@{digest}"


def test_fullname_is_cut_to_63_characters() -> None:
    # helm caps release names at 53; a long nameOverride pushes the full name past 63.
    docs = render({"nameOverride": "n" * 30}, release="r" * 53)
    names = {d["metadata"]["name"] for d in docs if d["kind"] != "CustomResourceDefinition"}
    assert names == {("r" * 53 + "-" + "n" * 30)[:63]}


def test_configmap_sets_only_real_operator_settings() -> None:
    data = _config(render({"operator.extraEnv": ["A=1", "B=2"], "replicas": 2}))
    known = {"KUBESLIM_" + f.name.upper() for f in fields(OperatorConfig)}
    assert set(data) <= known, set(data) - known
    config = OperatorConfig.from_env(data)
    assert config.extra_env == ("A=1", "B=2")
    assert config.peering == "kubeslim"
    assert config.namespaces == ()
    assert config.health_port == 8080


def test_policy_allow_lists_and_pull_secrets_reach_the_operator_config() -> None:
    docs = render(
        {
            "policy.serviceAccounts": ["ml-runner"],
            "policy.images": ["registry.local/ml/"],
            "policy.claims": ["data", "runs"],
            "stages.imagePullSecrets": ["pull"],
        }
    )
    config = OperatorConfig.from_env(_config(docs))
    assert config.allowed_service_accounts == ("ml-runner",)
    assert config.allowed_images == ("registry.local/ml/",)
    assert config.allowed_claims == ("data", "runs") and config.allowed_priority_classes == ()
    assert config.image_pull_secrets == ("pull",)


def test_metrics_port_and_an_optional_service_monitor() -> None:
    docs = render()
    assert OperatorConfig.from_env(_config(docs)).metrics_port == 8000
    ports = {p["name"]: p["containerPort"] for p in _container(docs)["ports"]}
    assert ports["metrics"] == 8000
    assert not find(docs, "ServiceMonitor") and not find(docs, "Service")
    docs = render(
        {"metrics.serviceMonitor.enabled": True, "metrics.serviceMonitor.labels.release": "p"}
    )
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "p"
    endpoint = {"port": "metrics", "path": "/metrics", "interval": "30s"}
    assert monitor["spec"]["endpoints"] == [endpoint]
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    deployment = one(docs, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    assert monitor["spec"]["selector"]["matchLabels"] == selector


def test_stage_images_follow_the_app_version_by_default() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "kubeslim" / "Chart.yaml").read_text())
    config = OperatorConfig.from_env(_config(render()))
    version = chart["appVersion"]
    assert config.trainer_image == f"ghcr.io/kubeslim/trainer:{version}"
    assert config.runtime_image == f"ghcr.io/kubeslim/runtime:{version}"


def test_stage_images_reach_the_operator_config() -> None:
    data = _config(render({"stages.trainerImage": "reg/t:1", "stages.runtimeImage": "reg/r:2"}))
    config = OperatorConfig.from_env(data)
    assert (config.trainer_image, config.runtime_image) == ("reg/t:1", "reg/r:2")


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("replica=2", "replica"),
        ("rbac.scop=namespace", "scop"),
        ("rbac.scope=global", "rbac"),
        ("serviceMonitor.enabled=true", "serviceMonitor"),
        ("image.digest=latest", "digest"),
    ],
)
def test_values_schema_rejects_bad_values(flag: str, expected: str) -> None:
    proc = helm("template", "x", str(CHART), "--set", flag, check=False)
    assert proc.returncode != 0
    assert "schema" in proc.stderr and expected in proc.stderr, proc.stderr


def _schema_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, sub in schema.get("properties", {}).items():
        assert sub.get("description"), f"{prefix}{name} has no description in the schema"
        keys.add(prefix + name)
        if sub.get("additionalProperties") is False:
            keys |= _schema_keys(sub, f"{prefix}{name}.")
    return keys


def _values_keys(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in values.items():
        keys.add(prefix + name)
        sub = schema["properties"].get(name, {})
        if isinstance(value, dict) and sub.get("additionalProperties") is False:
            keys |= _values_keys(value, sub, f"{prefix}{name}.")
    return keys


def test_values_schema_is_closed_and_matches_values_yaml() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert _schema_keys(schema) == _values_keys(values, schema)


def test_every_value_has_a_comment() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    documented = _schema_keys(schema)
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^( *)([A-Za-z][A-Za-z0-9]*):")
    path: list[str] = []
    seen = set()
    for i, line in enumerate(lines):
        match = key.match(line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        path = [*path[:depth], match.group(2)]
        dotted = ".".join(path)
        if dotted in documented:
            seen.add(dotted)
            assert lines[i - 1].strip().startswith("#"), f"values.yaml:{i + 1} {dotted}: no comment"
    assert seen == documented


def test_every_rbac_rule_has_a_comment() -> None:
    proc = helm(
        "template", "x", str(CHART), "--show-only", "templates/rbac.yaml", "--set", "replicas=2"
    )
    lines = proc.stdout.splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rules) >= 6
    for i in rules:
        assert lines[i - 1].strip().startswith("#"), f"rule without a comment: {lines[i]}"


def test_chart_crd_is_a_copy_of_the_generated_crd() -> None:
    generated = ROOT / "crds" / "modeloptimizations.kubeslim.dev.yaml"
    copy = CHART / "crds" / generated.name
    assert generated.is_file(), f"{generated} is missing: run `kubeslim crd > {generated}`"
    assert not copy.is_symlink(), "helm package drops symlinks: copy the file"
    assert copy.read_bytes() == generated.read_bytes(), (
        f"{copy} differs from {generated}: cp {generated} {copy}"
    )


def test_chart_packages(tmp_path: Path) -> None:
    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("kubeslim-*.tgz")
    import tarfile

    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "kubeslim/crds/modeloptimizations.kubeslim.dev.yaml" in names
    assert "kubeslim/values.schema.json" in names


# ---- examples/gitops: the kustomization and the Argo CD Application

GITOPS = ROOT / "examples" / "gitops"


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _render_with_values_file(values_file: Path, release: str, namespace: str) -> list[Doc]:
    proc = helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--include-crds",
        "-f",
        str(values_file),
    )
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_gitops_sample_is_a_valid_modeloptimization() -> None:
    from kubeslim.api.manifest import parse_manifest

    (doc,) = _load(GITOPS / "samples" / "modeloptimization.yaml")
    manifest = parse_manifest(doc)
    assert manifest.spec.dataset.name is not None and manifest.spec.dataset.name.value == "digits"
    # It can run in stage Pods: nothing in it is refused as UnsupportedInCluster.
    from kubeslim.planner.cluster import cluster_refusal

    assert cluster_refusal(manifest.spec) is None


def test_gitops_kustomization_installs_chart_and_sample() -> None:
    (kustomization,) = _load(GITOPS / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    for resource in kustomization["resources"]:
        for doc in _load(GITOPS / resource):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], resource
            if not doc["apiVersion"].startswith(CUSTOM_GROUPS):
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (chart,) = kustomization["helmCharts"]
    assert (GITOPS / kustomization["helmGlobals"]["chartHome"] / chart["name"]).resolve() == CHART
    # What kustomize --enable-helm runs: helm template with the same release, namespace, values.
    docs = _render_with_values_file(
        GITOPS / chart["valuesFile"], chart["releaseName"], chart["namespace"]
    )
    for doc in docs:
        if not doc["apiVersion"].startswith(CUSTOM_GROUPS):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # The operator serves the sample's namespace and the Namespace objects exist.
    (sample,) = _load(GITOPS / "samples" / "modeloptimization.yaml")
    served = _config(docs)["KUBESLIM_NAMESPACES"].split(",")
    assert sample["metadata"]["namespace"] in served
    namespaces = {
        d["metadata"]["name"]
        for r in kustomization["resources"]
        for d in _load(GITOPS / r)
        if d["kind"] == "Namespace"
    }
    assert {chart["namespace"], sample["metadata"]["namespace"]} <= namespaces


def test_argocd_application_points_at_this_repository() -> None:
    (app,) = _load(GITOPS / "argocd-application.yaml")
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    spec = app["spec"]
    refs = {s["ref"] for s in spec["sources"] if "ref" in s}
    paths = [s["path"] for s in spec["sources"] if "path" in s]
    for path in paths:
        assert (ROOT / path).is_dir(), path
    assert "charts/kubeslim" in paths and "examples/gitops/samples" in paths
    (chart_source,) = [s for s in spec["sources"] if s.get("path") == "charts/kubeslim"]
    values_files = chart_source["helm"]["valueFiles"]
    for values_file in values_files:
        ref, _, rel = values_file.partition("/")
        assert ref.lstrip("$") in refs, values_file
        docs = _render_with_values_file(
            ROOT / rel, chart_source["helm"]["releaseName"], spec["destination"]["namespace"]
        )
        assert one(docs, "Deployment")
    # The sample waits for the CRD that the chart brings in the same sync.
    (sample,) = _load(GITOPS / "samples" / "modeloptimization.yaml")
    options = sample["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
    assert "SkipDryRunOnMissingResource=true" in options
    assert "ServerSideApply=true" in spec["syncPolicy"]["syncOptions"]


def _documented_rules() -> set[tuple[str, str, frozenset[str]]]:
    """(group, resource, verbs) rows of the RBAC table in docs/operator.md."""
    text = (ROOT / "docs" / "operator.md").read_text()
    section = text.split("## API access", 1)[-1].split("\n## ", 1)[0]
    rows = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[2].startswith("`"):
            continue
        group = cells[0].split()[0].strip("`").strip('"')
        resource = cells[1].strip("`")
        verbs = frozenset(v.strip(" `") for v in cells[2].split(","))
        rows.add((group, resource, verbs))
    return rows


def test_rbac_rules_are_the_calls_docs_operator_md_lists() -> None:
    docs = render({"rbac.scope": "cluster"})
    chart_rules = {
        (group, resource, frozenset(rule["verbs"]))
        for rule in one(docs, "ClusterRole")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    documented = _documented_rules()
    assert documented, "no RBAC table found in docs/operator.md"
    assert chart_rules == documented


def test_each_replica_draws_a_priority_and_execs_the_operator(tmp_path: Path) -> None:
    """Run the peering start command under /bin/sh with a `kubeslim` that reports back."""
    import os
    import subprocess

    container = _container(render({"replicas": 2}))
    fake = tmp_path / "kubeslim"
    fake.write_text('#!/bin/sh\necho "$KUBESLIM_PRIORITY $*"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    outputs = set()
    for _ in range(5):
        proc = subprocess.run(
            [*container["command"], *container["args"]],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=True,
        )
        priority, args = proc.stdout.strip().split(" ", 1)
        assert 0 <= int(priority) <= 65535 and args == "operator"
        outputs.add(priority)
    assert len(outputs) > 1  # drawn, not fixed (5 equal draws: 1 in 2^64)


def test_gitops_kustomize_build_renders_chart_and_sample() -> None:
    """The real `kustomize build --enable-helm`, with our helm, as a GitOps tool runs it."""
    import subprocess

    proc = subprocess.run(
        [
            kustomize_binary(),
            "build",
            "--enable-helm",
            "--helm-command",
            helm_binary(),
            str(GITOPS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("CustomResourceDefinition") == 3
    assert {"Deployment", "Role", "RoleBinding", "KopfPeering", "ModelOptimization"} <= set(kinds)
    for doc in docs:
        if not doc["apiVersion"].startswith(CUSTOM_GROUPS):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert one(docs, "Deployment")["metadata"]["namespace"] == "kubeslim-system"
    assert one(docs, "ModelOptimization")["metadata"]["namespace"] == "ml"
