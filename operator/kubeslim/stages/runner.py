"""Running one stage: reuse or run, publish outputs, commit result.json last.

This is the single entry point behind `kubeslim stage NAME` (what a Job runs)
and, through child processes, behind `kubeslim run`.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from kubeslim.api.manifest import load_manifest
from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.errors import KubeslimError, MissingArtifact, SpecError, describe_validation_error
from kubeslim.progress import Reporter
from kubeslim.stages.context import StageContext, StageOutput, file_digest, output_key
from kubeslim.stages.inputs import check_inputs
from kubeslim.stages.pipeline import STAGE_SECTIONS, digest, spec_fingerprints, stage_enabled
from kubeslim.stages.result import StageResult
from kubeslim.store import ArtifactStore, open_store
from kubeslim.store.shared import SharedCache, cache_store, prune_versions, retain_order

# Bumped by hand when a stage's outputs change meaning, so results of older
# versions are recomputed. The release version is deliberately not hashed: an
# upgrade must not re-run work whose inputs did not change.
RESULT_FORMAT = 1

StageFn = Callable[[StageContext], StageOutput]

# Which earlier stages' outputs each stage reads.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "prune": (),
    "convert": ("prune",),
    "quantize": ("convert",),
    "benchmark": ("convert", "quantize"),
    "select": (),  # reads the candidates' results below candidates/ (see stages/select.py)
}
# Stages whose outputs other runs with the same inputs reuse from the shared cache.
# Not select: it also writes selected/ and its measurements beside its result.
SHARED_STAGES = frozenset({"prune", "convert", "quantize", "benchmark"})


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
        "format": RESULT_FORMAT,
        "spec": {k: dumped[k] for k in STAGE_SECTIONS[name]},
        "upstream": {
            s: ctx.upstream(s).fingerprint for s in UPSTREAM[name] if stage_enabled(spec, s)
        },
    }
    checkpoint = checkpoint_digest(name, spec)
    if checkpoint:
        parts["checkpoint"] = checkpoint
    if name == "select":
        from kubeslim.stages.select import candidate_fingerprints

        parts["candidates"] = candidate_fingerprints(ctx)
    return digest(parts)


def checkpoint_digest(name: str, spec: ModelOptimizationSpec) -> str | None:
    """sha256 of the checkpoint's bytes, for the stages that read it."""
    if name not in ("prune", "convert") or not spec.model.checkpoint:
        return None
    from kubeslim.store.cache import fetch

    try:
        return file_digest(fetch(spec.model.checkpoint))
    except FileNotFoundError:
        raise SpecError("spec.model.checkpoint", f"no such file: {spec.model.checkpoint}") from None


def check_same_checkpoint(name: str, ctx: StageContext, current: str | None) -> None:
    """Refuse to mix weights: convert's baseline must come from the bytes prune started from."""
    if name != "convert" or current is None or not stage_enabled(ctx.spec, "prune"):
        return
    used = ctx.upstream("prune").checkpoint_digest
    if used and used != current:
        raise SpecError(
            "spec.model.checkpoint",
            f"its content changed since stage prune ran (sha256 {used[:12]} then, "
            f"{current[:12]} now): run the pipeline again from prune "
            "(on a cluster: annotate the resource kubeslim.dev/retry)",
        )


def run_stage(
    name: str,
    spec: ModelOptimizationSpec,
    store: ArtifactStore,
    reporter: Reporter,
    force: bool = False,
    cache: ArtifactStore | None = None,
) -> StageResult:
    """Reuse the stored result if its inputs are unchanged, else copy it from the
    shared cache (another run with the same inputs made it), else run and commit."""
    check_inputs(spec)
    shared = SharedCache(cache) if cache is not None else None
    with tempfile.TemporaryDirectory(prefix=f"kubeslim-{name}-") as tmp:
        ctx = StageContext(
            spec=spec, store=store, reporter=reporter, scratch=Path(tmp), force=force
        )
        if shared is not None:
            _restore_upstream(name, ctx, shared)
        fp = fingerprint(name, ctx)
        checkpoint = checkpoint_digest(name, spec)
        check_same_checkpoint(name, ctx, checkpoint)
        key = f"{name}/result.json"
        cached = _cached(store, key, fp)
        if cached is not None and not force:
            return cached.model_copy(update={"reused": True})
        # Invalidate first: if this run fails, no result claims the stage is done.
        store.delete(key)
        if shared is not None and not force:
            adopted = _adopt(name, fp, spec_fingerprints(spec)[name], store, shared)
            if adopted is not None:
                _retain(name, fp, spec, store, shared)
                return adopted
        started = time.monotonic()
        output = stage_function(name)(ctx)
        from kubeslim.stages.distributed import current_rank

        if not current_rank().main:
            # A torchrun job's other ranks only trained: rank 0 publishes and commits.
            return StageResult(stage=name, fingerprint=fp, outputs={}, result_uri=key)
        outputs = _publish(store, f"{name}/{fp[:16]}", output)
        # Keys relative to the artifacts root: a reader with another mount point or
        # endpoint resolves them against its own root, and the compact result stays
        # small whatever the root's length.
        result = StageResult(
            stage=name,
            fingerprint=fp,
            outputs=outputs,
            metrics=output.metrics,
            details=output.details,
            duration_seconds=round(time.monotonic() - started, 2),
            result_uri=key,
            checkpoint_digest=checkpoint,
            spec_fingerprint=spec_fingerprints(spec)[name],
            cache_key=f"{name}/{fp}" if shared is not None and name in SHARED_STAGES else None,
        )
        if shared is not None and name in SHARED_STAGES:
            entry = _publish(shared.store, f"{name}/{fp}", output)
            shared.commit(name, fp, {**result.model_dump(mode="json"), "outputs": entry})
        store.write_json(key, result.model_dump(mode="json"))
        _retain(name, fp, spec, store, shared)
        return result


def _adopt(
    name: str, fp: str, spec_fp: str, store: ArtifactStore, shared: SharedCache
) -> StageResult | None:
    """Copy a cache entry with this fingerprint into the run root and commit it there."""
    if name not in SHARED_STAGES:
        return None
    entry = shared.lookup(name, fp)
    if entry is None:
        return None
    prefix = f"{name}/{fp[:16]}"
    shared.copy_into(name, fp, store, prefix)
    key = f"{name}/result.json"
    outputs = {k: f"{prefix}/{v.rpartition('/')[2]}" for k, v in entry["outputs"].items()}
    result = StageResult.model_validate(
        {
            **entry,
            "outputs": outputs,
            "result_uri": key,
            "spec_fingerprint": spec_fp,
            "cache_key": f"{name}/{fp}",
        }
    )
    result = result.model_copy(update={"reused": False, "shared": True})
    store.write_json(key, result.model_dump(mode="json"))
    return result.model_copy(update={"reused": True})


def _restore_upstream(name: str, ctx: StageContext, shared: SharedCache) -> None:
    """Copy in the upstream results this run root lacks from the shared cache.

    On a cluster the operator may mark a stage done without a Job when another
    resource already produced it (same inputs); the next stage's Job then finds
    that result here, by its content fingerprint.
    """
    for up in UPSTREAM[name]:
        if not stage_enabled(ctx.spec, up) or _current_here(up, ctx):
            continue
        _restore_upstream(up, ctx, shared)
        _adopt(up, fingerprint(up, ctx), spec_fingerprints(ctx.spec)[up], ctx.store, shared)


def _current_here(stage: str, ctx: StageContext) -> bool:
    """Whether the run root holds the stage's result for the current spec (a cheap
    check by spec fingerprint: the content fingerprint may need the checkpoint)."""
    key = f"{stage}/result.json"
    if not ctx.store.exists(key):
        return False
    try:
        held = ctx.store.read_json(key).get("spec_fingerprint")
    except (MissingArtifact, json.JSONDecodeError, AttributeError):
        return False
    # Results of versions before spec_fingerprint existed are trusted, as they were.
    return held is None or held == spec_fingerprints(ctx.spec)[stage]


def _retain(
    name: str,
    fp: str,
    spec: ModelOptimizationSpec,
    store: ArtifactStore,
    shared: SharedCache | None,
) -> None:
    """Record this fingerprint as the stage's newest; delete versions beyond the limits."""
    retention = spec.artifacts.retention
    retain_order(store, name, fp[:16])
    prune_versions(store, name, retention.keep_fingerprints)
    if shared is not None and name in SHARED_STAGES:
        shared.prune(name, retention.keep_shared)


def _cached(store: ArtifactStore, key: str, fp: str) -> StageResult | None:
    if not store.exists(key):
        return None
    try:
        result = StageResult.model_validate(store.read_json(key))
    except (ValidationError, json.JSONDecodeError):
        return None
    if result.fingerprint != fp:
        return None
    if not all(store.exists(output_key(store, u)) for u in result.outputs.values()):
        return None
    return result


def _publish(store: ArtifactStore, prefix: str, output: StageOutput) -> dict[str, str]:
    """Upload companions first and named outputs after, so a named output is
    never visible without the files it needs."""
    for path in output.companions:
        store.upload(path, f"{prefix}/{path.name}")
    keys = {}
    for name, path in output.files.items():
        store.upload(path, f"{prefix}/{path.name}")
        keys[name] = f"{prefix}/{path.name}"
    return keys


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
    stop_on_sigterm()
    try:
        spec = _load_spec(manifest, spec_json)
        store = open_store(artifacts or spec.artifacts.uri)
        cache = cache_store(spec.artifacts.uri, store)
        if candidate is not None:
            from kubeslim.stages.select import candidate_run

            spec, store = candidate_run(spec, store, candidate)
        result = run_stage(name, spec, store, Reporter(progress), force=force, cache=cache)
    except KubeslimError as err:
        failure: dict[str, Any] = {"stage": name, "error": str(err), "exitCode": err.exit_code}
        if isinstance(err, SpecError):
            failure["field"] = err.field
        _write(result_file, json.dumps(failure)[:3500])
        raise
    from kubeslim.stages.distributed import current_rank

    if not current_rank().main:
        return 0  # rank 0 reports the job's result
    compact = result.compact()
    _write(result_file, compact)
    state = "reused" if result.reused else f"done in {result.duration_seconds:.1f}s"
    print(f"stage {name}: {state} -> {store.uri(result.result_uri)}", file=sys.stderr)
    print("KUBESLIM_RESULT " + compact, flush=True)
    return 0


def stop_on_sigterm() -> None:
    """Exit at once on SIGTERM (Job deleted, node drained).

    In a container the stage is PID 1, which the kernel shields from signals
    without a handler: without this a deleted Pod would wait out its whole
    grace period before SIGKILL.
    """

    def _terminate(signum: int, frame: FrameType | None) -> None:
        del frame
        print("error: terminated (SIGTERM)", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)


def _load_spec(manifest: str | None, spec_json: str | None) -> ModelOptimizationSpec:
    if manifest is not None:
        return load_manifest(manifest).spec
    try:
        raw = json.loads(spec_json or "")
    except json.JSONDecodeError as err:
        raise SpecError("--spec-json", f"expected a JSON object: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError("--spec-json", "expected a JSON object")
    spec, ignored = parse_newer_spec(raw)
    if ignored:
        print(
            "warning: this stage image does not know these spec fields (a newer operator "
            f"set them); ignoring: {', '.join(ignored)}",
            file=sys.stderr,
        )
    return spec


def parse_newer_spec(raw: dict[str, Any]) -> tuple[ModelOptimizationSpec, list[str]]:
    """The spec an operator sent, minus fields this (older) image does not know.

    A manifest given by hand stays strict (a misspelt field is an error); the
    operator's copy may come from a newer version whose new fields this stage
    cannot act on anyway.
    """
    data = json.loads(json.dumps(raw))
    ignored: list[str] = []
    while True:
        try:
            return ModelOptimizationSpec.model_validate(data), ignored
        except ValidationError as err:
            extra = [e["loc"] for e in err.errors() if e["type"] == "extra_forbidden"]
            if not extra:
                raise describe_validation_error(err) from None
            for loc in extra:
                _drop(data, loc)
                ignored.append(".".join(["spec", *map(str, loc)]))


def _drop(data: Any, loc: tuple[int | str, ...]) -> None:
    for part in loc[:-1]:
        data = data[part]
    data.pop(loc[-1], None)


def _write(path: str | None, text: str) -> None:
    if path:
        try:
            Path(path).write_text(text)
        except OSError as err:  # a missing /dev/termination-log must not fail the stage
            print(f"warning: cannot write {path}: {err}", file=sys.stderr)
