"""Every Kubernetes API call the operator makes itself (kopf makes the rest).

Each function is one verb on one resource, so the RBAC table in
docs/operator.md can be checked against this file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from kubeslim.constants import (
    GROUP,
    HANDLER_THREADS,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    PLURAL,
    VERSION,
)
from kubeslim.errors import KubeslimError

JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


@dataclass
class Kube:
    """The API clients, built once."""

    api: client.ApiClient
    batch: client.BatchV1Api
    core: client.CoreV1Api
    custom: client.CustomObjectsApi

    @classmethod
    def connect(cls) -> Kube:
        """In-cluster credentials when in a Pod, else $KUBECONFIG or ~/.kube/config."""
        try:
            config.load_incluster_config()
        except ConfigException:
            try:
                config.load_kube_config()
            except (ConfigException, OSError) as err:
                raise KubeslimError(
                    f"no cluster credentials: not in a Pod, and no usable kubeconfig ({err})"
                ) from None
        settings = client.Configuration.get_default_copy()
        # One connection per handler thread: a full pool drops connections, and each new
        # one costs a TLS handshake.
        settings.connection_pool_maxsize = HANDLER_THREADS + 4
        api = client.ApiClient(settings)
        return cls(api, client.BatchV1Api(api), client.CoreV1Api(api), client.CustomObjectsApi(api))

    def plain(self, obj: Any) -> Any:
        """A client model as the JSON the API server sent (camelCase, RFC 3339 times)."""
        return self.api.sanitize_for_serialization(obj)

    # kopfpeerings / clusterkopfpeerings (kopf.dev): patch, as kopf's own keep-alives do
    def patch_peering(
        self, namespace: str | None, name: str, identity: str, peer: dict[str, Any]
    ) -> None:
        """Write one replica's entry into kopf's peering object (namespaced or cluster-wide)."""
        body = {"status": {identity: peer}}
        if namespace:
            self.custom.patch_namespaced_custom_object(
                "kopf.dev", "v1", namespace, "kopfpeerings", name, body
            )
        else:
            self.custom.patch_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", name, body
            )

    # modeloptimizations: get; modeloptimizations/status: patch
    def get_optimization(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The resource, or None once it is gone."""
        try:
            body = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return dict(body)

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A JSON merge patch of .status (the status subresource)."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": patch},
            _content_type="application/merge-patch+json",
        )

    # jobs: list, create, delete (watch comes from kopf)
    def list_jobs(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        """The stage Jobs labelled for one resource."""
        selector = f"{LABEL_NAME}={owner},{LABEL_MANAGED_BY}={MANAGED_BY}"
        jobs = self.batch.list_namespaced_job(namespace, label_selector=selector)
        return [self.plain(j) for j in jobs.items]

    def create_job(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a Job; False when it exists already (409: someone, maybe us, made it)."""
        try:
            self.batch.create_namespaced_job(namespace, body)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def find_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One Job by name, through `list` (the operator has no `get` on Jobs)."""
        jobs = self.batch.list_namespaced_job(namespace, field_selector=f"metadata.name={name}")
        return self.plain(jobs.items[0]) if jobs.items else None

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its Pods."""
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as err:
            if err.status != 404:
                raise

    # services: create, get, delete (the rendezvous of a multi-worker prune Job)
    def create_service(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a Service; False when it exists already (409)."""
        try:
            self.core.create_namespaced_service(namespace, body)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One Service, or None when there is none."""
        try:
            return dict(self.plain(self.core.read_namespaced_service(name, namespace)))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def delete_service(self, namespace: str, name: str) -> None:
        """Delete a Service (gone already is fine)."""
        try:
            self.core.delete_namespaced_service(name, namespace)
        except ApiException as err:
            if err.status != 404:
                raise

    # pods: list; pods/log: get
    def list_job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The Pods of a Job, oldest first."""
        for label in JOB_NAME_LABELS:
            pods = self.core.list_namespaced_pod(namespace, label_selector=f"{label}={job}")
            if pods.items:
                found = [self.plain(p) for p in pods.items]
                return sorted(found, key=lambda p: p["metadata"].get("creationTimestamp") or "")
        return []

    def pod_log_tail(self, namespace: str, pod: str, lines: int) -> str:
        """The last lines of a Pod's log ('' when the log cannot be read)."""
        try:
            # Raw bytes: the client's own decoding of this text response is unreliable.
            rsp = self.core.read_namespaced_pod_log(
                pod, namespace, tail_lines=lines, _preload_content=False
            )
        except ApiException:
            return ""
        return bytes(rsp.data).decode("utf-8", errors="replace")


def api_error(err: ApiException) -> str:
    """The API server's own message from an error response."""
    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason)
    except (ValueError, AttributeError):
        return str(err.reason)
