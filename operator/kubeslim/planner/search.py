"""The search over pruning targets, as pure functions: measured candidates in,
the next round (or the choice) out.

Deeper pruning is assumed to cost accuracy and buy speed, so refinement
narrows the interval between the deepest target within the budget and the
shallowest one outside it (bisection in rounds, `candidatesPerRound` points at a
time). The choice never relies on that assumption: it takes the best objective
among every measured candidate within the budget.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from kubeslim.api.spec import ModelOptimizationSpec, SearchSpec, TargetKind
from kubeslim.api.status import (
    CandidateState,
    CandidateStatus,
    ModelOptimizationStatus,
    SearchOutcome,
    SearchStatus,
)
from kubeslim.stages.pipeline import spec_fingerprints
from kubeslim.stages.result import TERMINATION_MESSAGE_LIMIT
from kubeslim.store.refs import resolve

# Accuracies are ratios of counts; a drop equal to the budget must count as within it.
BUDGET_SLACK = 1e-9
CANDIDATES_PREFIX = "candidates"


@dataclass(frozen=True)
class Candidate:
    """One pruning target to try."""

    name: str
    target: float
    round: int


@dataclass(frozen=True)
class Measured:
    """A candidate's outcome: its INT8 accuracy drop and its objective score.

    drop is absolute (0.01 = 1 point); score is higher-is-better (the speedup on
    the objective's measure over the original);
    a failed candidate has neither and is never chosen.
    """

    candidate: Candidate
    drop: float | None
    score: float | None

    @property
    def failed(self) -> bool:
        """Whether the candidate produced no measurement."""
        return self.drop is None or self.score is None


@dataclass(frozen=True)
class Selection:
    """The search's answer once no round is left."""

    outcome: SearchOutcome
    chosen: Candidate | None = None
    closest: Candidate | None = None


def candidate_name(target: float) -> str:
    """A stable, Job-name-safe name from the target: 0.5 -> 't5000' (per ten thousand)."""
    return f"t{round(target * 10000):04d}"


def candidate(target: float, round_: int) -> Candidate:
    """The candidate for a target, rounded to the precision names carry."""
    target = round(target, 4)
    return Candidate(candidate_name(target), target, round_)


def first_round(search: SearchSpec) -> list[Candidate]:
    """The listed targets, or an even grid over the range."""
    if search.targets:
        return [candidate(t, 0) for t in sorted(search.targets)]
    assert search.range is not None  # the spec guarantees exactly one source
    lo, hi, k = search.range.min, search.range.max, search.candidates_per_round
    if k == 1:
        return [candidate((lo + hi) / 2, 0)]
    return [candidate(lo + (hi - lo) * i / (k - 1), 0) for i in range(k)]


def within_budget(search: SearchSpec, m: Measured) -> bool:
    """Whether a measured candidate's drop fits maxAccuracyDrop."""
    if m.failed or m.drop is None:
        return False
    return m.drop <= search.max_accuracy_drop + BUDGET_SLACK


def next_round(search: SearchSpec, measured: Sequence[Measured]) -> list[Candidate]:
    """The candidates of the next round; empty when the search is over.

    Round 0 is the first round. A refinement round tries targets strictly
    between the deepest target within budget and the shallowest one outside it,
    none closer than `resolution` to a target already tried. The search stops
    after `rounds` refinements, when that interval holds no new target, or when
    the last refinement round did not improve the best objective.
    """
    if not measured:
        return first_round(search)
    last = max(m.candidate.round for m in measured)
    if last >= search.rounds:
        return []
    if last > 0 and not _improved(search, measured, last):
        return []
    lo, hi = _bracket(search, measured)
    if hi is None or hi - lo <= search.resolution:
        return []
    tried = [m.candidate.target for m in measured]
    k = search.candidates_per_round
    points = [lo + (hi - lo) * i / (k + 1) for i in range(1, k + 1)]
    fresh = [p for p in points if all(abs(p - t) >= search.resolution for t in tried)]
    return [candidate(p, last + 1) for p in fresh]


def _bracket(search: SearchSpec, measured: Sequence[Measured]) -> tuple[float, float | None]:
    """(deepest target within budget or 0, shallowest target outside it beyond that or None)."""
    inside = [m.candidate.target for m in measured if within_budget(search, m)]
    lo = max(inside, default=0.0)
    outside = [
        m.candidate.target
        for m in measured
        if not m.failed and not within_budget(search, m) and m.candidate.target > lo
    ]
    return lo, min(outside, default=None)


def _improved(search: SearchSpec, measured: Sequence[Measured], last: int) -> bool:
    """Whether round `last` found a better in-budget score than every round before it."""
    before = [m.score for m in measured if m.candidate.round < last and within_budget(search, m)]
    now = [m.score for m in measured if m.candidate.round == last and within_budget(search, m)]
    best_before = max((s for s in before if s is not None), default=None)
    best_now = max((s for s in now if s is not None), default=None)
    if best_now is None:
        return False
    return best_before is None or best_now > best_before


def select(search: SearchSpec, measured: Sequence[Measured]) -> Selection:
    """The best score within budget (ties: the shallower target, which keeps more
    of the model); if none fits, the candidate with the smallest drop as closest."""
    inside = [m for m in measured if within_budget(search, m)]
    if inside:
        best = max(inside, key=lambda m: (m.score or 0.0, -m.candidate.target))
        return Selection(SearchOutcome.selected, chosen=best.candidate)
    valid = [m for m in measured if not m.failed]
    if not valid:
        return Selection(SearchOutcome.no_candidate_within_budget)
    closest = min(valid, key=lambda m: (m.drop or 0.0, -(m.score or 0.0)))
    return Selection(SearchOutcome.no_candidate_within_budget, closest=closest.candidate)


def candidate_spec(spec: ModelOptimizationSpec, cand: Candidate) -> ModelOptimizationSpec:
    """The single-pipeline spec of one candidate: the target replaced, no search, no
    benchmark stage (the select stage measures every candidate side by side)."""
    assert spec.search is not None
    key = "flops_reduction" if spec.search.target is TargetKind.flops_reduction else "filter_rate"
    other = "filter_rate" if key == "flops_reduction" else "flops_reduction"
    target = spec.pruning.target.model_copy(update={key: cand.target, other: None})
    pruning = spec.pruning.model_copy(update={"target": target})
    benchmark = spec.benchmark.model_copy(update={"enabled": False})
    return spec.model_copy(update={"pruning": pruning, "benchmark": benchmark, "search": None})


def candidate_prefix(name: str) -> str:
    """Where a candidate's stages write, below the resource's artifacts root."""
    return f"{CANDIDATES_PREFIX}/{name}"


def candidate_from_name(name: str) -> Candidate:
    """The candidate a name stands for (a Job or `kubeslim stage --candidate` names it)."""
    digits = name[1:]
    if not name.startswith("t") or not digits.isdigit() or not 0 < int(digits) < 10000:
        raise ValueError(f"candidate {name!r}: expected t<target per ten thousand>, e.g. t5000")
    return candidate(int(digits) / 10000, 0)


# --- the candidate table: every candidate's figures in a few bytes per row ----------

# The select stage's metrics travel in a termination message (3,500 bytes in all), so
# the table is packed: one array per candidate, in these columns (withinBudget as 1 or
# 0: the stage's own verdict, not one redone from a rounded drop). name and state
# follow from target and the figures.
TABLE_COLUMNS = (
    "target",
    "round",
    "flopsReduction",
    "accuracyBeforeInt8",
    "accuracyAfterInt8",
    "accuracyDrop",
    "speedup",
    "sizeBytes",
    "withinBudget",
)
# What a compact result holds besides its metrics (stage, fingerprints, outputs, times),
# with room to spare: the table gets the rest of the termination message.
ENVELOPE_BYTES = 700
_DIGITS = {"target": 4, "flopsReduction": 3, "accuracyBeforeInt8": 4, "accuracyAfterInt8": 4,
           "accuracyDrop": 3, "speedup": 3}  # fmt: skip


def fit_table(
    metrics: dict[str, Any], rows: Sequence[dict[str, Any]], keep: Sequence[str] = ()
) -> dict[str, Any]:
    """The packed table for these metrics: as many rows as the termination message
    holds beside them (about 40; a search has at most 56)."""
    others = len(json.dumps(metrics, separators=(",", ":")))
    return pack_table(rows, keep, TERMINATION_MESSAGE_LIMIT - ENVELOPE_BYTES - others)


def pack_table(
    rows: Sequence[dict[str, Any]], keep: Sequence[str] = (), limit: int = 1 << 20
) -> dict[str, Any]:
    """{"columns", "rows"[, "omitted"]}: the rows by target, figures rounded; if they do
    not fit `limit` bytes, the earliest rounds' rows go first (never those named in
    keep), and "omitted" counts them: the full table is in the report."""
    packed = [[_rounded(col, r.get(col)) for col in TABLE_COLUMNS] for r in rows]
    order = sorted(range(len(rows)), key=lambda i: rows[i].get("target", 0.0))
    dropped: set[int] = set()
    # The least informative first: early rounds, then the shallow end.
    spare = sorted(
        (i for i in order if rows[i].get("name") not in keep),
        key=lambda i: (rows[i].get("round", 0), rows[i].get("target", 0.0)),
    )
    while _size([packed[i] for i in order if i not in dropped]) > limit and spare:
        dropped.add(spare.pop(0))
    table: dict[str, Any] = {
        "columns": list(TABLE_COLUMNS),
        "rows": [packed[i] for i in order if i not in dropped],
    }
    if dropped:
        table["omitted"] = len(dropped)
    return table


def unpack_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidate rows of a select result: the packed table, or the list of rows
    that select results carried before the table was packed."""
    table = metrics.get("candidateTable")
    if not isinstance(table, dict):
        listed = metrics.get("candidates")
        return [r for r in listed if isinstance(r, dict)] if isinstance(listed, list) else []
    columns = table.get("columns") or []
    out = []
    for values in table.get("rows") or []:
        row = {c: v for c, v in zip(columns, values, strict=False) if v is not None}
        if not isinstance(row.get("target"), int | float):
            continue
        row["name"] = candidate_name(float(row["target"]))
        measured = row.get("accuracyDrop") is not None
        row["state"] = CandidateState.measured.value if measured else CandidateState.failed.value
        if "withinBudget" in row:
            row["withinBudget"] = bool(row["withinBudget"])
        out.append(row)
    return out


def _rounded(column: str, value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    digits = _DIGITS.get(column)
    return round(value, digits) if digits is not None and isinstance(value, float) else value


def _size(rows: list[list[Any]]) -> int:
    return len(json.dumps(rows, separators=(",", ":")))


# --- the search on a cluster: rounds of Jobs, how many at once, what status says -------

CANDIDATE_STAGES = ("prune", "convert", "quantize")
SEARCH_STAGES = (*CANDIDATE_STAGES, "select")


def select_shard(round_: int) -> str:
    """The select Job's shard: none in round 0 (as before rounds ran on a cluster),
    'r<k>' in refinement round k, so each round's select is a Job of its own."""
    return f"r{round_}" if round_ else ""


def search_round(
    spec: ModelOptimizationSpec, status: ModelOptimizationStatus
) -> tuple[int, list[Candidate]]:
    """The round now running on the cluster and its candidates.

    Round 0 comes from the spec. A later round is what the planner recorded in
    status.search when the previous round's select result named it; it holds only
    while the select stage's fingerprint is the one it was recorded under (a spec
    edit that changes the search starts again from round 0, whose finished Jobs
    and results are then found and reused).
    """
    assert spec.search is not None
    search = status.search
    entry = next((s for s in status.stages if s.name == "select"), None)
    current = spec_fingerprints(spec)["select"]
    if search is None or search.round == 0 or entry is None or entry.fingerprint != current:
        return 0, first_round(spec.search)
    names = [Candidate(c.name, c.target, c.round) for c in search.candidates]
    return search.round, [c for c in names if c.round == search.round]


def candidate_shards(
    spec: ModelOptimizationSpec, stage: str, status: ModelOptimizationStatus
) -> tuple[str, ...]:
    """One Job per candidate of the current round for the candidate stages, that
    round's select Job for select; one plain Job for every other stage."""
    if spec.search is None or stage not in SEARCH_STAGES:
        return ("",)
    round_, cands = search_round(spec, status)
    if stage == "select":
        return (select_shard(round_),)
    return tuple(c.name for c in cands)


def refinement(
    spec: ModelOptimizationSpec, status: ModelOptimizationStatus, select_result: dict[str, Any]
) -> list[Candidate]:
    """The next round's candidates that a select result names (its `nextRound`, decided
    by next_round in the select stage); empty when the search is over.

    Their round follows the last round the result measured, so a select that found a
    later round already finished (a restart) and went on is followed as it is.
    """
    metrics = select_result.get("metrics") or {}
    names = [n for n in metrics.get("nextRound") or [] if isinstance(n, str)]
    if spec.search is None or not names:
        return []
    rows = unpack_table(metrics)
    last = max((int(r.get("round", 0)) for r in rows), default=search_round(spec, status)[0])
    return [replace(candidate_from_name(n), round=last + 1) for n in names]


def next_round_status(
    status: ModelOptimizationStatus, select_result: dict[str, Any], nxt: Sequence[Candidate]
) -> SearchStatus:
    """status.search as the next round starts: the measured rows so far, then the new
    round's candidates, pending."""
    measured = _table_status(select_result.get("metrics") or {})
    fresh = [
        CandidateStatus(name=c.name, target=c.target, round=c.round, state=CandidateState.pending)
        for c in nxt
    ]
    round_ = nxt[0].round
    return measured.model_copy(
        update={
            "round": round_,
            "candidates": [*measured.candidates, *fresh][:CANDIDATES_IN_STATUS],
            "message": f"round {round_}: {len(fresh)} candidates, "
            f"{len(measured.candidates)} measured before",
        }
    )


def within_parallelism(
    spec: ModelOptimizationSpec, running: int, missing: Sequence[str]
) -> list[str]:
    """The candidate Jobs to create now: at most `search.parallelism` run at once."""
    if spec.search is None:
        return list(missing)
    return list(missing[: max(0, spec.search.parallelism - running)])


def candidate_args(spec: ModelOptimizationSpec, stage: str, shard: str) -> list[str]:
    """The extra arguments of a candidate's stage Job."""
    if spec.search is None or not shard or stage not in CANDIDATE_STAGES:
        return []
    return ["--candidate", shard]


def search_status(
    spec: ModelOptimizationSpec,
    status: ModelOptimizationStatus,
    select_result: dict[str, Any] | None,
    jobs: Sequence[tuple[str, str, str]],
    root: str,
) -> SearchStatus | None:
    """status.search: the select stage's figures once the last round's select ran, else
    the rows measured in earlier rounds plus the current round's candidates by their Jobs.

    status is the one the plan started from; select_result the select stage's
    compact result; jobs are (shard, stage, phase) of the observed Jobs; root is
    the resource's artifacts URI.
    """
    if spec.search is None:
        return None
    metrics = (select_result or {}).get("metrics") or {}
    if unpack_table(metrics):
        report = ((select_result or {}).get("outputs") or {}).get("report")
        found = _table_status(metrics)
        update: dict[str, Any] = {
            "report": resolve(root, report) if isinstance(report, str) else None,
            "selected_ir": resolve(root, found.selected_ir) if found.selected_ir else None,
        }
        return found.model_copy(update=update)
    round_, cands = search_round(spec, status)
    earlier = [c for c in (status.search.candidates if status.search else []) if c.round < round_]
    entries = [*earlier]
    for c in cands:
        phases = {(stage, phase) for shard, stage, phase in jobs if shard == c.name}
        state = CandidateState.pending
        if any(p == "Failed" for _, p in phases):
            state = CandidateState.failed
        elif phases:
            state = CandidateState.running
        entries.append(CandidateStatus(name=c.name, target=c.target, round=c.round, state=state))
    return SearchStatus(
        round=round_,
        candidates=entries[:CANDIDATES_IN_STATUS],
        message=f"{len(cands)} candidates in round {round_}"
        + (f", {len(earlier)} measured before" if earlier else ""),
    )


def _table_status(m: dict[str, Any]) -> SearchStatus:
    candidates = []
    for row in unpack_table(m)[:CANDIDATES_IN_STATUS]:
        fields = {k: v for k, v in row.items() if k in CANDIDATE_KEYS}
        try:
            candidates.append(CandidateStatus.model_validate(fields))
        except ValueError:
            continue
    chosen = next((c for c in candidates if c.name == m.get("chosen")), None)
    omitted = int((m.get("candidateTable") or {}).get("omitted") or 0)
    message = str(m.get("message", ""))
    if omitted:
        message += f" ({omitted} more candidates in the report)"
    return SearchStatus(
        outcome=SearchOutcome(m.get("outcome", SearchOutcome.searching.value)),
        round=max((c.round for c in candidates), default=0),
        candidates=candidates,
        chosen=m.get("chosen"),
        closest=m.get("closest"),
        chosen_speedup=f"{chosen.speedup:.2f}x" if chosen and chosen.speedup else None,
        chosen_drop=f"{chosen.accuracy_drop:.2f}pt"
        if chosen and chosen.accuracy_drop is not None
        else None,
        selected_ir=m.get("selectedIr"),
        message=message[:1024],
    )


CANDIDATES_IN_STATUS = 64  # SearchStatus.candidates' bound; the spec's largest search is 56
# A candidate's figures in status (CandidateStatus, by alias) and in selected/selection.json.
CANDIDATE_KEYS = frozenset({"name", "state", "withinBudget", *TABLE_COLUMNS})
