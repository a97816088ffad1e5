"""The operator's configuration, read once from KUBESLIM_* environment variables.

The Helm chart's ConfigMap sets these; `kubeslim operator` flags override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from kubeslim import __version__
from kubeslim.errors import SpecError

ENV_PREFIX = "KUBESLIM_"
# Stages that import torch (training, ONNX export): only the trainer image has it, so
# the runtime image stays free of torch and its CUDA libraries.
TORCH_STAGES = frozenset({"prune", "convert"})


@dataclass(frozen=True)
class OperatorConfig:
    """Each attribute is read from KUBESLIM_<NAME in upper case>."""

    # namespaces to watch; empty means every namespace (cluster-wide mode).
    namespaces: tuple[str, ...] = ()
    # trainer_image runs the stages that need torch (TORCH_STAGES: prune, convert).
    # Image tags follow the operator's own version, so stages and operator match.
    trainer_image: str = f"ghcr.io/kubeslim/trainer:{__version__}"
    # runtime_image runs the others (quantize, benchmark: OpenVINO, NNCF, no torch).
    runtime_image: str = f"ghcr.io/kubeslim/runtime:{__version__}"
    # image_pull_policy of the stage containers.
    image_pull_policy: str = "IfNotPresent"
    # stage_command is the entry point inside the stage images.
    stage_command: str = "kubeslim"
    # max_concurrent optimizations with a stage running; the rest wait (0: no limit).
    max_concurrent: int = 4
    # peering is kopf's peering name so that only one replica acts; empty runs standalone.
    peering: str = ""
    # priority of this replica in the peering (the highest acts).
    priority: int = 0
    # health_port serves /healthz for the liveness probe (0 turns it off).
    health_port: int = 8080
    # metrics_port serves Prometheus metrics at /metrics (0 turns it off).
    metrics_port: int = 0
    # job_service_account runs stage Pods when the spec names none ("" = namespace default).
    job_service_account: str = ""
    # progress_interval in seconds between reads of a running stage's progress.
    progress_interval: float = 10.0
    # log_tail_lines of a failed Pod's log copied into the Failed condition.
    log_tail_lines: int = 20
    # start_timeout in seconds a stage Pod may stay unable to start (image pull, no
    # node that fits) before its stage fails; configuration errors fail at once.
    start_timeout: float = 600.0
    # extra_env is passed to every stage container (KEY=VALUE, comma-separated).
    extra_env: tuple[str, ...] = field(default=())
    # image_pull_secrets of every stage Pod (Secret names in the resource's namespace),
    # before those the spec names.
    image_pull_secrets: tuple[str, ...] = field(default=())
    # Allow-lists of what a ModelOptimization may ask its stage Pods to run with; empty
    # allows anything. Whoever may create a ModelOptimization gets Pods with these.
    allowed_service_accounts: tuple[str, ...] = field(default=())
    allowed_priority_classes: tuple[str, ...] = field(default=())
    # allowed_images are prefixes ("registry.example.com/ml/") of execution.trainerImage
    # and runtimeImage; empty allows any image.
    allowed_images: tuple[str, ...] = field(default=())
    # allowed_claims: PVCs a spec may mount (datasetVolume, artifacts.volume).
    allowed_claims: tuple[str, ...] = field(default=())

    def stage_image(self, stage: str) -> str:
        """The image that has what `stage` imports."""
        return self.trainer_image if stage in TORCH_STAGES else self.runtime_image

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> OperatorConfig:
        """Read every attribute from the environment; overrides (e.g. CLI flags) win."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if f.name in overrides and overrides[f.name] is not None:
                values[f.name] = overrides[f.name]
            elif raw is not None:
                values[f.name] = _parse(f.name, str(f.type), raw)
        return cls(**values)


def _parse(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name.startswith("tuple"):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
    except ValueError:
        raise SpecError(ENV_PREFIX + name.upper(), f"expected a {type_name}, got {raw!r}") from None
    return raw
