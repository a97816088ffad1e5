"""The search over pruning targets, as pure functions: measured candidates in,
the next round (or the choice) out.

Deeper pruning is assumed to cost accuracy and buy speed, so refinement
narrows the interval between the deepest target within the budget and the
shallowest one outside it (bisection in rounds, `candidatesPerRound` points at a
time). The choice never relies on that assumption: it takes the best objective
among every measured candidate within the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubeslim.api.spec import ModelOptimizationSpec, SearchSpec, TargetKind
from kubeslim.api.status import CandidateState, CandidateStatus, SearchOutcome, SearchStatus

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


# --- the search on a cluster: which Jobs, how many at once, what status says ----------

CANDIDATE_STAGES = ("prune", "convert", "quantize")


def candidate_shards(spec: ModelOptimizationSpec, stage: str) -> tuple[str, ...]:
    """One Job per first-round candidate for the candidate stages; one plain Job otherwise.

    Refinement rounds run locally (`kubeslim run`); on a cluster the select stage
    reports them in `nextRound` and the status names them, but no Jobs start for them.
    """
    if spec.search is None or stage not in CANDIDATE_STAGES:
        return ("",)
    return tuple(c.name for c in first_round(spec.search))


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
    select_result: dict[str, Any] | None,
    jobs: Sequence[tuple[str, str, str]],
    root: str,
) -> SearchStatus | None:
    """status.search: the select stage's figures once it ran, else the candidates' Jobs.

    select_result is the select stage's compact result; jobs are (shard, stage,
    phase) of the observed Jobs; root is the resource's artifacts URI.
    """
    if spec.search is None:
        return None
    metrics = (select_result or {}).get("metrics") or {}
    if isinstance(metrics.get("candidates"), list):
        report = ((select_result or {}).get("outputs") or {}).get("report")
        if isinstance(report, str) and "://" not in report and not report.startswith("/"):
            report = f"{root.rstrip('/')}/{report}"
        return _selected_status(metrics).model_copy(update={"report": report})
    entries = []
    for c in first_round(spec.search):
        phases = {(stage, phase) for shard, stage, phase in jobs if shard == c.name}
        state = CandidateState.pending
        if any(p == "Failed" for _, p in phases):
            state = CandidateState.failed
        elif phases:
            state = CandidateState.running
        entries.append(CandidateStatus(name=c.name, target=c.target, round=c.round, state=state))
    return SearchStatus(candidates=entries, message=f"{len(entries)} candidates in round 0")


def _selected_status(m: dict[str, Any]) -> SearchStatus:
    candidates = []
    for row in m["candidates"][:64]:
        fields = {k: v for k, v in row.items() if k in _CANDIDATE_KEYS}
        try:
            candidates.append(CandidateStatus.model_validate(fields))
        except ValueError:
            continue
    chosen = next((c for c in candidates if c.name == m.get("chosen")), None)
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
        message=str(m.get("message", ""))[:1024],
    )


_CANDIDATE_KEYS = {
    "name",
    "target",
    "round",
    "state",
    "flopsReduction",
    "accuracyBeforeInt8",
    "accuracyAfterInt8",
    "accuracyDrop",
    "speedup",
    "sizeBytes",
    "withinBudget",
}
