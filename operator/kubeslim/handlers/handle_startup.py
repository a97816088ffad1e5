"""Startup: where kopf keeps its own bookkeeping, set once before any handler runs."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubeslim.constants import HANDLER_THREADS, JOB_SELECTOR, KOPF_PREFIX


def configure_kopf(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Finalizer, progress and diff-base under kubeslim.dev annotations; nothing in status.

    The status schema is closed (a structural CRD), so the API server would
    prune kopf's default `status.kopf` progress and handlers would re-run
    (nolar/kopf#574); annotations are kept as written.
    """
    settings.persistence.finalizer = f"{KOPF_PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    # Watch streams that end on the server's side now and then, so a silently dead
    # connection cannot stall the operator.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Watch only the operator's own Jobs: the API server filters, so other Jobs in the
    # namespace cost neither traffic nor memory (kopf's labels= filters client-side).
    settings.watching.label_selectors["batch", "v1", "jobs"] = JOB_SELECTOR
    # Serve only what exists at startup: no list/watch of CRDs and namespaces needed.
    settings.scanning.disabled = True
    # Our own Events say what happened; kopf's per-handler log lines stay in the log.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "kubeslim-operator"
    settings.execution.max_workers = HANDLER_THREADS
