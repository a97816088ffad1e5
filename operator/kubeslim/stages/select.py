"""The select stage: measure every finished search candidate beside the original, in
one process per split, and pick the best one within the accuracy budget.

Candidates live under candidates/<name>/ (prune, convert, quantize, each with its
own result.json). The stage replays the search (kubeslim.planner.search) over
what it finds: a round whose candidates are all measured leads to the next
round; a round with unfinished candidates ends the replay and is handed back as
`nextRound` for the executor to run. Measurements are cached by content hash
(the candidate's quantize fingerprint, or the original model and checkpoint,
plus the measurement settings), so the original is measured once per search and
a candidate once, however often the stage runs.
"""

from __future__ import annotations

import platform
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from kubeslim.api.spec import ModelOptimizationSpec, SearchSpec
from kubeslim.api.status import SearchOutcome
from kubeslim.errors import SpecError
from kubeslim.planner.search import (
    CANDIDATE_KEYS,
    Candidate,
    Measured,
    Selection,
    candidate_prefix,
    candidate_spec,
    fit_table,
    next_round,
    within_budget,
)
from kubeslim.planner.search import (
    select as choose,
)
from kubeslim.stages.baseline import fetch_copy, shared_cache
from kubeslim.stages.benchmark import _split_arrays, measure_in_child, paired_ratios
from kubeslim.stages.context import StageContext, StageOutput
from kubeslim.stages.pipeline import digest
from kubeslim.store import ArtifactStore, open_store

CANDIDATE_STAGES = ("prune", "convert", "quantize")
FAILED_MARKER = "failed.json"  # written by an executor when a candidate's pipeline failed
SELECTED = "selected"
VERSIONED = ("kubeslim", "torch", "torch-pruning", "openvino", "nncf", "onnx", "matplotlib")


@dataclass
class Replay:
    """What the replay over the stored candidates found."""

    measured: list[Measured] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    pending: list[Candidate] = field(default_factory=list)


def select(ctx: StageContext) -> StageOutput:
    """Measure the candidates, choose, copy the chosen IR to selected/, render the report."""
    search = _search(ctx.spec)
    bench = _Bench(ctx, search)
    replay = _replay(ctx, search, bench)
    if not replay.measured:
        raise SpecError("spec.search", "no candidate has finished: run the candidates first")
    selection = choose(search, replay.measured) if not replay.pending else None
    body = _body(ctx, search, bench.baseline(), replay, selection)
    _publish_selected(ctx.store, body)
    from kubeslim.report.html import render

    report = ctx.scratch / "report.html"
    report.write_text(render(body))
    return StageOutput(files={"report": report}, metrics=body["metrics"], details=body["details"])


def _search(spec: ModelOptimizationSpec) -> SearchSpec:
    if spec.search is None:
        raise SpecError("spec.search", "the select stage needs a search")
    return spec.search


def budget_split(ctx: StageContext) -> Any:
    """The split the budget is measured on: the tuning split, never the test split.

    The one place to switch: numpy splits where the stage context has them (the
    runtime image reads data without torch), torch datasets otherwise.
    """
    arrays = getattr(ctx, "arrays", None)
    return arrays.tuning if arrays is not None else ctx.splits.tuning


def test_split(ctx: StageContext) -> Any:
    """The split whose accuracy is reported, never used for choosing."""
    arrays = getattr(ctx, "arrays", None)
    return arrays.test if arrays is not None else ctx.splits.test


def candidate_store(store: ArtifactStore, name: str) -> ArtifactStore:
    """The store a candidate's pipeline writes to."""
    return open_store(store.uri(candidate_prefix(name)))


def candidate_run(
    spec: ModelOptimizationSpec, store: ArtifactStore, name: str
) -> tuple[ModelOptimizationSpec, ArtifactStore]:
    """The spec and store of one candidate's pipeline (`kubeslim stage --candidate`)."""
    from kubeslim.planner.search import candidate_from_name

    if spec.search is None:
        raise SpecError("--candidate", "the spec has no search")
    try:
        cand = candidate_from_name(name)
    except ValueError as err:
        raise SpecError("--candidate", str(err)) from None
    return candidate_spec(spec, cand), candidate_store(store, name)


def candidate_fingerprints(ctx: StageContext) -> dict[str, str]:
    """name -> quantize fingerprint of every stored, current candidate: what the
    select stage's own fingerprint depends on besides the spec."""
    assert ctx.spec.search is not None
    out = {}
    for name in _stored_names(ctx.store):
        fp = _current(ctx, name)
        if fp:
            out[name] = fp
    return out


def _stored_names(store: ArtifactStore) -> list[str]:
    prefix = f"{candidate_prefix('')}"
    names = {k.removeprefix(prefix).split("/", 1)[0] for k in store.list_keys(prefix.rstrip("/"))}
    return sorted(n for n in names if n)


def _current(ctx: StageContext, name: str) -> str | None:
    """The candidate's quantize fingerprint if its three stages hold for this spec."""
    from kubeslim.planner.search import candidate_from_name
    from kubeslim.stages.runner import fingerprint

    spec = candidate_spec(ctx.spec, candidate_from_name(name))
    sub = StageContext(spec, candidate_store(ctx.store, name), ctx.reporter, ctx.scratch)
    last = None
    for stage in CANDIDATE_STAGES:
        if not sub.store.exists(f"{stage}/result.json"):
            return None
        stored = sub.upstream(stage).fingerprint
        if fingerprint(stage, sub) != stored:
            return None
        last = stored
    return last


def _replay(ctx: StageContext, search: SearchSpec, bench: _Bench) -> Replay:
    replay = Replay()
    round_ = next_round(search, [])
    while round_:
        done = {c.name: _current(ctx, c.name) for c in round_}
        failed = [c for c in round_ if not done[c.name] and ctx.store.exists(_failed_key(c.name))]
        missing = [c for c in round_ if not done[c.name] and c not in failed]
        if missing:
            replay.pending = missing
            break
        for c in failed:
            replay.measured.append(Measured(c, None, None))
            replay.rows.append(_failed_row(ctx, c))
        finished = [c for c in round_ if done[c.name]]
        for c, row in zip(finished, bench.candidates(finished), strict=True):
            replay.rows.append(row)
            replay.measured.append(Measured(c, row["accuracyDrop"] / 100, row["score"]))
        round_ = next_round(search, replay.measured)
    for row, m in zip(replay.rows, replay.measured, strict=True):
        row["withinBudget"] = within_budget(search, m)
    return replay


def _failed_key(name: str) -> str:
    return f"{candidate_prefix(name)}/{FAILED_MARKER}"


def _failed_row(ctx: StageContext, c: Candidate) -> dict[str, Any]:
    reason = ctx.store.read_json(_failed_key(c.name)).get("error", "")
    return {"name": c.name, "target": c.target, "round": c.round, "state": "Failed",
            "message": str(reason)[:300]}  # fmt: skip


def budget_accuracy(row: dict[str, Any]) -> float:
    """The accuracy the budget is judged on: the tuning split's, never the test split's.

    The one place to switch; rows from a measurement without a tuning split fall
    back to the test accuracy.
    """
    return float(row.get("tuningAccuracy", row["accuracy"]))


class _Bench:
    """Measurements of the original and the candidates, side by side in one process per
    call (interleaved rounds), cached in the store by content hash."""

    def __init__(self, ctx: StageContext, search: SearchSpec) -> None:
        self.ctx, self.search = ctx, search
        spec = ctx.spec
        self.settings = digest(
            {
                "benchmark": spec.benchmark.model_dump(mode="json"),
                "dataset": spec.dataset.model_dump(mode="json"),
                "model": spec.model.model_dump(mode="json"),
                "batch": search.batch_size,
            }
        )
        self._data: dict[str, dict[str, str]] | None = None
        self._baseline_key = f"select/measure/baseline-{self.settings[:16]}.json"

    def _config(self, speed: bool) -> dict[str, Any]:
        cfg = self.ctx.spec.benchmark.model_dump(mode="json", by_alias=True)
        cfg["batchSizes"] = [self.search.batch_size]
        cfg["modes"] = ["latency", "throughput"] if speed else []
        return cfg

    def _measure(self, models: list[dict[str, str]], speed: bool) -> list[dict[str, Any]]:
        if self._data is None:
            self.ctx.reporter.phase("prepare-data")
            self._data = {
                "test": _split_arrays(self.ctx, test_split(self.ctx), "test"),
                "tuning": _split_arrays(self.ctx, budget_split(self.ctx), "tuning"),
            }
        request = {"models": models, "data": self._data, "config": self._config(speed)}
        rows: list[dict[str, Any]] = measure_in_child(self.ctx, request)["models"]
        return rows

    def baseline(self) -> dict[str, Any]:
        """The original FP32 IR as first measured in this search (accuracy, speed, size);
        empty while no candidate finished (every one failed)."""
        if not self.ctx.store.exists(self._baseline_key):
            return {}
        return dict(self.ctx.store.read_json(self._baseline_key))

    def _sub(self, name: str) -> StageContext:
        from kubeslim.planner.search import candidate_from_name

        spec = candidate_spec(self.ctx.spec, candidate_from_name(name))
        scratch = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.ctx.scratch))
        return StageContext(spec, candidate_store(self.ctx.store, name), self.ctx.reporter, scratch)

    def candidates(self, cands: list[Candidate]) -> list[dict[str, Any]]:
        """One row per finished candidate, measuring those not measured before."""
        if not cands:
            return []
        store = self.ctx.store
        keys = {c.name: self._key(c) for c in cands}
        todo = [c for c in cands if not store.exists(keys[c.name])]
        if todo or not store.exists(self._baseline_key):
            self._measure_new(todo or cands[:1], keys)
        base = self.baseline()
        return [self._row(c, store.read_json(keys[c.name]), base) for c in cands]

    def _key(self, c: Candidate) -> str:
        fp = _current(self.ctx, c.name) or ""
        return f"select/measure/{c.name}-{digest([fp, self.settings])[:16]}.json"

    def _measure_new(self, todo: list[Candidate], keys: dict[str, str]) -> None:
        """The original and the new candidates' INT8 IRs timed in the same rounds (so
        every speedup is a paired ratio); their FP16 IRs for accuracy only."""
        subs = {c.name: self._sub(c.name) for c in todo}
        first = subs[todo[0].name]
        original = {"label": "original", "path": str(self._baseline_ir(first))}
        int8 = [
            {"label": c.name, "path": str(subs[c.name].fetch_output("quantize", "int8_ir"))}
            for c in todo
        ]
        fp16 = [
            {"label": c.name, "path": str(subs[c.name].fetch_output("convert", "ir"))} for c in todo
        ]
        self.ctx.reporter.phase("measure-candidates", steps=len(todo))
        timed = self._measure([original, *int8], speed=True)
        before = self._measure(fp16, speed=False)
        base = timed[0]
        if not self.ctx.store.exists(self._baseline_key):
            convert = first.upstream("convert").metrics
            base_row = {**base, "flops": convert.get("baselineFlops"),
                        "params": convert.get("baselineParams")}  # fmt: skip
            self.ctx.store.write_json(self._baseline_key, base_row)
        for c, row, fp in zip(todo, timed[1:], before, strict=True):
            sub = subs[c.name]
            prune = sub.upstream("prune")
            convert = sub.upstream("convert").metrics
            record = {
                **row,
                "accuracyBeforeInt8": budget_accuracy(fp),
                "ratios": paired_ratios(base, row),
                "flopsReduction": prune.metrics.get("flopsReduction"),
                "flops": convert.get("flops"),
                "params": convert.get("params"),
                "layers": prune.details.get("layers", []),
                "int8Ir": sub.upstream("quantize").outputs.get("int8_ir"),
            }
            self.ctx.store.write_json(keys[c.name], record)

    def _baseline_ir(self, sub: StageContext) -> Path:
        """The original's FP32 IR: the search root's copy of the shared baseline (results
        from before it was shared name it as a convert output of every candidate)."""
        convert = sub.upstream("convert")
        key_hash = convert.metrics.get("baselineHash")
        if not isinstance(key_hash, str):
            return sub.fetch_output("convert", "baseline_ir")
        cache = shared_cache(self.ctx.spec.artifacts.uri, self.ctx.store)
        return fetch_copy(self.ctx.store, cache, key_hash, sub.scratch / "baseline")

    def _row(self, c: Candidate, m: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        ratios = m.get("ratios") or {}
        throughput = (ratios.get(str(self.search.batch_size)) or {}).get("median")
        latency = (ratios.get("latency") or {}).get("median")
        size = _ratio(base["sizeBytes"], m["sizeBytes"])
        speedup = {"throughput": throughput, "latency": latency, "size": size}[
            self.search.objective.value
        ]
        return {
            "name": c.name,
            "target": c.target,
            "round": c.round,
            "state": "Measured",
            **{k: v for k, v in m.items() if k not in ("model", "ratios")},
            "accuracyAfterInt8": budget_accuracy(m),
            "accuracyDrop": round((budget_accuracy(base) - budget_accuracy(m)) * 100, 3),
            "testAccuracyDrop": round((base["accuracy"] - m["accuracy"]) * 100, 3),
            # The score is the paired ratio over the original timed in the same call,
            # so candidates of different rounds (different calls) compare fairly.
            "score": speedup or 0.0,
            "speedup": speedup,
            "throughputSpeedup": throughput,
            "latencySpeedup": latency,
            "sizeReduction": size,
        }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _body(
    ctx: StageContext,
    search: SearchSpec,
    base: dict[str, Any],
    replay: Replay,
    selection: Selection | None,
) -> dict[str, Any]:
    """The stage's metrics (compact: they travel in the termination message, so the
    candidates go as a packed table) and details (every figure, for the report)."""
    outcome = selection.outcome if selection else SearchOutcome.searching
    chosen = selection.chosen.name if selection and selection.chosen else None
    closest = selection.closest.name if selection and selection.closest else None
    rows = sorted(replay.rows, key=lambda r: r["target"])
    best = next((r for r in rows if r["name"] == chosen), None)
    metrics: dict[str, Any] = {
        "outcome": outcome.value,
        "chosen": chosen,
        "closest": closest,
        "nextRound": [c.name for c in replay.pending],
        "maxAccuracyDrop": search.max_accuracy_drop,
        "objective": search.objective.value,
        "message": _message(search, outcome, chosen, closest, rows),
    }
    if best is not None:
        metrics.update(_summary(base, best))
        # Relative to the artifacts root, like every result reference (store/refs.py).
        metrics["selectedIr"] = f"{SELECTED}/model.xml"
    metrics["candidateTable"] = fit_table(metrics, rows, keep=[n for n in (chosen, closest) if n])
    details = {
        "baseline": base,
        "candidates": rows,
        "spec": ctx.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "versions": versions(),
    }
    return {"metrics": metrics, "details": details}


def _compact(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k in CANDIDATE_KEYS and v is not None}


def _summary(base: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """The status metrics of the chosen model against the original (as the benchmark's)."""

    def model(row: dict[str, Any], accuracy: str) -> dict[str, Any]:
        keys = ("latencyMsP50", "latencyMsP90", "throughputFps", "sizeBytes", "flops", "params")
        return {"accuracy": row[accuracy], **{k: row[k] for k in keys if row.get(k) is not None}}

    return {
        "baseline": model(base, "accuracy"),
        "optimized": model(best, "accuracyAfterInt8"),
        "speedup": best.get("throughputSpeedup"),
        "latencySpeedup": best.get("latencySpeedup"),
        "sizeReduction": best.get("sizeReduction"),
        "accuracyDrop": best["accuracyDrop"],
        "precision": base.get("precision"),
    }


def _message(
    search: SearchSpec,
    outcome: SearchOutcome,
    chosen: str | None,
    closest: str | None,
    rows: list[dict[str, Any]],
) -> str:
    budget = f"{search.max_accuracy_drop * 100:.2f} points"
    by_name = {r["name"]: r for r in rows}
    if outcome is SearchOutcome.selected and chosen:
        r = by_name[chosen]
        return (f"chose {chosen} (target {r['target']}): {r['speedup']}x {search.objective.value}, "
                f"drop {r['accuracyDrop']:.2f} points within {budget}")  # fmt: skip
    if outcome is SearchOutcome.no_candidate_within_budget:
        if closest:
            r = by_name[closest]
            return (f"no candidate within {budget}; closest is {closest} (target {r['target']}, "
                    f"drop {r['accuracyDrop']:.2f} points)")  # fmt: skip
        return f"no candidate within {budget}: every candidate failed"
    return f"searching: {len(rows)} candidates measured"


def _publish_selected(store: ArtifactStore, body: dict[str, Any]) -> None:
    """Copy the chosen INT8 IR to selected/ (.bin first, .xml, then selection.json),
    or clear selected/ when nothing was chosen, so the stable URI never names a
    model outside the budget."""
    metrics = body["metrics"]
    chosen = metrics.get("chosen")
    if not chosen:
        for name in ("selection.json", "model.xml", "model.bin"):
            store.delete(f"{SELECTED}/{name}")
        return
    row = next(r for r in body["details"]["candidates"] if r["name"] == chosen)
    xml_key = _key_in(store, str(row["int8Ir"]), chosen)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.xml"
        store.download(xml_key, local)
        store.download(xml_key[: -len(".xml")] + ".bin", local.with_suffix(".bin"))
        store.upload(local.with_suffix(".bin"), f"{SELECTED}/model.bin")
        store.upload(local, f"{SELECTED}/model.xml")
    store.write_json(f"{SELECTED}/selection.json", {"chosen": chosen, "candidate": _compact(row)})


def _key_in(store: ArtifactStore, ref: str, name: str) -> str:
    """A candidate output's key below the search root (results name outputs by full URI
    or by a key relative to the candidate's own root)."""
    if ref.startswith(store.root + "/"):
        return ref.removeprefix(store.root + "/")
    if "://" in ref:
        raise SpecError("artifacts.uri", f"candidate {name} output {ref} is outside {store.root}")
    return f"{candidate_prefix(name)}/{ref}"


def versions() -> dict[str, str]:
    """Exact versions of the packages that shaped the result."""
    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
