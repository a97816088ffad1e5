"""The cleanup Job: deletes a deleted resource's artifacts with the stage Pods' access.

The operator holds no storage credentials and mounts no artifacts volume, so the
deletion runs where the stages run: the same image, Secret, volume, service
account and locked-down Pod as a stage (built by the stage Job builder), with
`kubeslim clean` as its command. It is not owned by the resource, which is on
its way out (a foreground deletion would remove an owned Job before it ran), and
it carries no `kubeslim.dev/modeloptimization` label, so the operator's Job watch
ignores it; ttlSecondsAfterFinished removes it afterwards.
"""

from __future__ import annotations

import hashlib
from typing import Any

from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.config import OperatorConfig
from kubeslim.constants import GROUP, LABEL_MANAGED_BY, MANAGED_BY
from kubeslim.executors.job import Owner, artifacts_uri, build_job
from kubeslim.planner.model import MAX_NAME, JobRequest

LABEL_CLEANUP = f"{GROUP}/cleanup-of"  # the deleted resource's name
CLEANUP_TTL_S = 600
CLEANUP_DEADLINE_S = 600  # the Job's own limit; the operator waits less (handlers)
RUNTIME_STAGE = "quantize"  # the image without torch: small, and it has the S3 client


def cleanup_job_name(owner: Owner) -> str:
    """`<name>-cleanup-<uid[:8]>`: a namesake created later gets its own."""
    name = f"{owner.name}-cleanup-{owner.uid[:8]}"
    if len(name) <= MAX_NAME:
        return name
    return f"{name[: MAX_NAME - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def build_cleanup_job(
    spec: ModelOptimizationSpec, owner: Owner, config: OperatorConfig
) -> dict[str, Any]:
    """A one-Pod Job that runs `kubeslim clean --artifacts <the resource's root>`."""
    name = cleanup_job_name(owner)
    request = JobRequest(stage=RUNTIME_STAGE, name=name, fingerprint="", generation=0)
    job = build_job(spec, request, owner, config)
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_CLEANUP: owner.name}
    job["metadata"] = {"name": name, "namespace": owner.namespace, "labels": labels}
    spec_ = job["spec"]
    spec_["template"]["metadata"] = {"labels": labels}
    spec_.update(
        backoffLimit=2,
        activeDeadlineSeconds=CLEANUP_DEADLINE_S,
        ttlSecondsAfterFinished=CLEANUP_TTL_S,
    )
    container = spec_["template"]["spec"]["containers"][0]
    container["command"] = [
        config.stage_command,
        "clean",
        "--artifacts",
        artifacts_uri(spec, owner),
    ]
    container.pop("resources", None)  # a listing and deletes: the stage's GPUs are not needed
    return job
