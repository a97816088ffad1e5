"""What the cluster's operator allows a ModelOptimization to ask of its stage Pods.

Whoever may create a ModelOptimization gets Pods that run with the service
account, priority class, volumes and images its spec names. The operator's
allow-lists (the chart's `policy` values) bound that; an empty list allows
anything. A spec outside them is refused before any Job, naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.errors import SpecError


@dataclass(frozen=True)
class Allowed:
    """The allow-lists; an empty tuple allows anything."""

    service_accounts: tuple[str, ...] = ()
    priority_classes: tuple[str, ...] = ()
    images: tuple[str, ...] = ()  # prefixes
    claims: tuple[str, ...] = ()


def policy_refusal(spec: ModelOptimizationSpec, allowed: Allowed) -> SpecError | None:
    """The first field outside the allow-lists, or None."""
    execution = spec.execution
    checks: list[tuple[str, str | None, tuple[str, ...], bool]] = [
        ("spec.execution.serviceAccountName", execution.service_account_name,
         allowed.service_accounts, False),
        ("spec.execution.priorityClassName", execution.priority_class_name,
         allowed.priority_classes, False),
        ("spec.execution.trainerImage", execution.trainer_image, allowed.images, True),
        ("spec.execution.runtimeImage", execution.runtime_image, allowed.images, True),
        ("spec.execution.datasetVolume.claimName",
         execution.dataset_volume.claim_name if execution.dataset_volume else None,
         allowed.claims, False),
        ("spec.artifacts.volume.claimName",
         spec.artifacts.volume.claim_name if spec.artifacts.volume else None,
         allowed.claims, False),
    ]  # fmt: skip
    for field, value, allow, prefixes in checks:
        if value is None or not allow:
            continue
        ok = any(value.startswith(a) for a in allow) if prefixes else value in allow
        if not ok:
            kind = "prefixes" if prefixes else "values"
            return SpecError(
                field,
                f"{value!r} is not allowed by this operator (allowed {kind}: {', '.join(allow)})",
            )
    return None
