"""Running one stage: reuse or run, publish outputs, commit result.json last.

This is the single entry point behind `kubeslim stage NAME` (what a Job runs)
and, through child processes, behind `kubeslim run`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from kubeslim import __version__
from kubeslim.api.manifest import load_manifest, parse_spec
from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.errors import KubeslimError, SpecError
from kubeslim.progress import Reporter
from kubeslim.stages.context import StageContext, StageOutput, file_digest
from kubeslim.stages.pipeline import STAGE_SECTIONS, digest, stage_enabled
from kubeslim.stages.result import StageResult
from kubeslim.store import ArtifactStore, open_store

StageFn = Callable[[StageContext], StageOutput]

# Which earlier stages' outputs each stage reads.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "prune": (),
    "convert": ("prune",),
    "quantize": ("convert",),
    "benchmark": ("convert", "quantize"),
    "select": (),  # reads the candidates' results below candidates/ (see stages/select.py)
}


def stage_function(name: str) -> StageFn:
    """The stage's implementation, imported only when it runs."""
    if name == "prune":
        from kubeslim.stages.prune import prune

        return prune
    if name == "convert":
        from kubeslim.stages.convert import convert

        return convert
    if name == "quantize":
        from kubeslim.stages.quantize import quantize

        return quantize
    if name == "benchmark":
        from kubeslim.stages.benchmark import benchmark

        return benchmark
    if name == "select":
        from kubeslim.stages.select import select

        return select
    raise KubeslimError(f"unknown stage {name!r}")


def fingerprint(name: str, ctx: StageContext) -> str:
    """Content hash of the stage's inputs: its spec sections, the checkpoint's
    bytes and the fingerprints of the upstream results it reads."""
    spec = ctx.spec
    dumped = spec.model_dump(mode="json")
    parts: dict[str, object] = {
        "stage": name,
        "version": __version__,
        "spec": {k: dumped[k] for k in STAGE_SECTIONS[name]},
        "upstream": {
            s: ctx.upstream(s).fingerprint for s in UPSTREAM[name] if stage_enabled(spec, s)
        },
    }
    if name in ("prune", "convert") and spec.model.checkpoint:
        from kubeslim.store.cache import fetch

        parts["checkpoint"] = file_digest(fetch(spec.model.checkpoint))
    if name == "select":
        from kubeslim.stages.select import candidate_fingerprints

        parts["candidates"] = candidate_fingerprints(ctx)
    return digest(parts)


def run_stage(
    name: str,
    spec: ModelOptimizationSpec,
    store: ArtifactStore,
    reporter: Reporter,
    force: bool = False,
) -> StageResult:
    """Reuse the stored result if its inputs are unchanged, else run and commit."""
    with tempfile.TemporaryDirectory(prefix=f"kubeslim-{name}-") as tmp:
        ctx = StageContext(spec=spec, store=store, reporter=reporter, scratch=Path(tmp))
        fp = fingerprint(name, ctx)
        key = f"{name}/result.json"
        cached = _cached(store, key, fp)
        if cached is not None and not force:
            return cached.model_copy(update={"reused": True})
        # Invalidate first: if this run fails, no result claims the stage is done.
        store.delete(key)
        started = time.monotonic()
        output = stage_function(name)(ctx)
        outputs = _publish(store, f"{name}/{fp[:16]}", output)
        result = StageResult(
            stage=name,
            fingerprint=fp,
            outputs=outputs,
            metrics=output.metrics,
            details=output.details,
            duration_seconds=round(time.monotonic() - started, 2),
            result_uri=store.uri(key),
        )
        store.write_json(key, result.model_dump(mode="json"))
        return result


def _cached(store: ArtifactStore, key: str, fp: str) -> StageResult | None:
    if not store.exists(key):
        return None
    try:
        result = StageResult.model_validate(store.read_json(key))
    except (ValidationError, json.JSONDecodeError):
        return None
    if result.fingerprint != fp:
        return None
    prefix = store.root + "/"
    if not all(store.exists(u.removeprefix(prefix)) for u in result.outputs.values()):
        return None
    return result


def _publish(store: ArtifactStore, prefix: str, output: StageOutput) -> dict[str, str]:
    """Upload companions first and named outputs after, so a named output is
    never visible without the files it needs."""
    for path in output.companions:
        store.upload(path, f"{prefix}/{path.name}")
    uris = {}
    for name, path in output.files.items():
        store.upload(path, f"{prefix}/{path.name}")
        uris[name] = store.uri(f"{prefix}/{path.name}")
    return uris


def run_stage_command(
    name: str,
    manifest: str | None,
    spec_json: str | None,
    artifacts: str | None,
    result_file: str | None,
    progress: str,
    force: bool,
    candidate: str | None = None,
) -> int:
    """`kubeslim stage NAME`: one stage, its compact result on stdout and in result_file.

    With a candidate, the stage runs that search candidate's pipeline: its spec
    (the candidate's target) under <artifacts>/candidates/<candidate>/.
    """
    try:
        spec = _load_spec(manifest, spec_json)
        store = open_store(artifacts or spec.artifacts.uri)
        if candidate is not None:
            from kubeslim.stages.select import candidate_run

            spec, store = candidate_run(spec, store, candidate)
        result = run_stage(name, spec, store, Reporter(progress), force=force)
    except KubeslimError as err:
        _write(result_file, json.dumps({"stage": name, "error": str(err)}))
        raise
    compact = result.compact()
    _write(result_file, compact)
    state = "reused" if result.reused else f"done in {result.duration_seconds:.1f}s"
    print(f"stage {name}: {state} -> {result.result_uri}", file=sys.stderr)
    print("KUBESLIM_RESULT " + compact, flush=True)
    return 0


def _load_spec(manifest: str | None, spec_json: str | None) -> ModelOptimizationSpec:
    if manifest is not None:
        return load_manifest(manifest).spec
    try:
        raw = json.loads(spec_json or "")
    except json.JSONDecodeError as err:
        raise SpecError("--spec-json", f"expected a JSON object: {err}") from None
    return parse_spec(raw)


def _write(path: str | None, text: str) -> None:
    if path:
        try:
            Path(path).write_text(text)
        except OSError as err:  # a missing /dev/termination-log must not fail the stage
            print(f"warning: cannot write {path}: {err}", file=sys.stderr)
