"""Wiring: which kopf decorator calls which handler, and `kubeslim operator`."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import kopf

from kubeslim.config import OperatorConfig
from kubeslim.constants import GROUP, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY, PLURAL, VERSION
from kubeslim.handlers import (
    handle_change_optimization,
    handle_delete_optimization,
    handle_event_job,
    handle_index,
    handle_startup,
    handle_timer_optimization,
)
from kubeslim.handlers.kube import Kube
from kubeslim.handlers.peering import announce
from kubeslim.handlers.reconcile import Runtime, SlotTable

MOPT = (GROUP, VERSION, PLURAL)
JOB_LABELS: dict[str, Any] = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_NAME: kopf.PRESENT}


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    """Attach every handler to the registry; each gets the shared runtime as `rt`."""
    config = rt.config

    def bound(fn: Any) -> Any:
        @functools.wraps(fn)
        def call(**kwargs: Any) -> Any:
            # kopf hands every handler its live indexes; kept on the runtime so that any
            # reconcile (one woken from the queue too) sees what other resources share.
            rt.shared_index = kwargs.get("shared_stages", rt.shared_index)
            return fn(rt=rt, **kwargs)

        return call

    # A fresh registry has no login handler: use the kubernetes client's own config
    # (in-cluster token, else $KUBECONFIG), as the operator's own calls do.
    kopf.on.login(registry=registry, id="login")(kopf.login_via_client)
    kopf.on.startup(registry=registry, id="configure")(handle_startup.configure_kopf)
    kopf.index(*MOPT, registry=registry, id="running_optimizations")(
        handle_index.running_optimizations
    )
    kopf.index(*MOPT, registry=registry, id="shared_stages")(handle_index.shared_stage_results)
    change = bound(handle_change_optimization.on_change)
    kopf.on.create(*MOPT, registry=registry, id="create")(change)
    kopf.on.update(*MOPT, registry=registry, id="update", field="spec")(change)
    kopf.on.resume(*MOPT, registry=registry, id="resume")(change)
    kopf.on.delete(*MOPT, registry=registry, id="release", optional=True)(
        bound(handle_delete_optimization.on_delete)
    )
    kopf.on.delete(
        *MOPT, registry=registry, id="artifacts", when=handle_delete_optimization.wants_cleanup
    )(bound(handle_delete_optimization.on_delete_artifacts))
    kopf.timer(
        *MOPT,
        registry=registry,
        id="progress",
        interval=config.progress_interval,
        initial_delay=config.progress_interval,
        when=handle_timer_optimization.unsettled,
    )(bound(handle_timer_optimization.on_timer))
    kopf.on.event("batch", "v1", "jobs", registry=registry, id="job", labels=JOB_LABELS)(
        bound(handle_event_job.on_job_event)
    )


def operator_kwargs(config: OperatorConfig) -> dict[str, Any]:
    """kopf.operator's arguments: scope, peering, liveness endpoint, registry."""
    rt = Runtime(config=config, kube=Kube.connect(), table=SlotTable(config.max_concurrent))
    registry = kopf.OperatorRegistry()
    register(registry, rt)
    kwargs: dict[str, Any] = {
        "registry": registry,
        "clusterwide": not config.namespaces,
        "namespaces": list(config.namespaces),
        "priority": config.priority,
    }
    if config.peering:
        kwargs["peering_name"] = config.peering  # two replicas: only the highest priority acts
    else:
        kwargs["standalone"] = True
    if config.metrics_port:
        rt.metrics.serve(config.metrics_port)
    if config.health_port:
        kwargs["liveness_endpoint"] = f"http://0.0.0.0:{config.health_port}/healthz"
    return kwargs


async def serve(config: OperatorConfig, **flags: Any) -> None:
    """Run until stopped (flags: kopf's stop_flag, ready_flag)."""
    kwargs = operator_kwargs(config)
    if config.peering:
        # Seen by the other replicas before this one can act (handlers/peering.py).
        await asyncio.to_thread(announce, config, Kube.connect())
    await kopf.operator(**kwargs, **flags)


def run_operator(config: OperatorConfig, verbose: bool = False) -> int:
    """`kubeslim operator`: run in the foreground until SIGTERM/SIGINT."""
    kopf.configure(verbose=verbose)
    logging.getLogger("kubeslim").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    # One access line per liveness probe would drown what matters.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not verbose:
        # kopf logs every timer tick at INFO; our own log lines say what changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    scope = ", ".join(config.namespaces) or "all namespaces"
    logging.getLogger("kubeslim.operator").info(
        "watching %s; at most %d optimizations at once", scope, config.max_concurrent
    )
    asyncio.run(serve(config))
    return 0
