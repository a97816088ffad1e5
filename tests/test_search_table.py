"""Every candidate's figures reach status, however many: the select stage's metrics
travel in a termination message (4,096 bytes), so the table is packed, and the
planner reads it back into status.search."""

from __future__ import annotations

import json
from typing import Any

from kubeslim.api.status import ModelOptimizationStatus, SearchStatus
from kubeslim.planner.search import fit_table, pack_table, search_status, unpack_table
from kubeslim.stages.result import TERMINATION_MESSAGE_LIMIT, StageResult
from tests.test_planner import spec_of

SEARCH = {"targets": [0.3, 0.5, 0.7], "maxAccuracyDrop": 0.01}


def row(i: int) -> dict[str, Any]:
    """A measured candidate with every figure at full float precision."""
    target = round(0.05 + i * 0.0161, 4)
    return {
        "name": f"t{round(target * 10000):04d}", "target": target, "round": i // 8,
        "state": "Measured", "flopsReduction": target * 0.98765432, "accuracyBeforeInt8":
        0.912345678, "accuracyAfterInt8": 0.90123456, "accuracyDrop": 1.2222222 * (i % 3),
        "speedup": 1.0 + target * 3.33333, "sizeBytes": 12_345_678, "withinBudget": i % 3 == 0,
        "tuningImages": 1500, "latencyMsP50": 0.1234, "layers": [{"name": "conv1"}] * 20,
    }  # fmt: skip


def select_result(rows: list[dict[str, Any]], chosen: str | None) -> StageResult:
    """A select result as the stage writes it, with the longest summary it carries."""
    metrics: dict[str, Any] = {
        "outcome": "Selected", "chosen": chosen, "closest": None, "nextRound": [],
        "maxAccuracyDrop": 0.01, "objective": "throughput",
        "message": "chose x (target 0.5): 2.345x throughput, drop 0.99 points within 1.00 points",
        "baseline": {"accuracy": 0.9123, "latencyMsP50": 0.1234, "latencyMsP90": 0.2345,
                     "throughputFps": 12345.67, "sizeBytes": 12345678, "flops": 123456789,
                     "params": 12345678},
        "optimized": {"accuracy": 0.9023, "latencyMsP50": 0.1234, "latencyMsP90": 0.2345,
                      "throughputFps": 12345.67, "sizeBytes": 12345678, "flops": 123456789,
                      "params": 12345678},
        "speedup": 2.345, "latencySpeedup": 1.234, "sizeReduction": 3.456, "accuracyDrop": 0.99,
        "precision": "bf16", "selectedIr": "selected/model.xml",
    }  # fmt: skip
    metrics["candidateTable"] = fit_table(metrics, rows, keep=[chosen] if chosen else [])
    return StageResult(
        stage="select", fingerprint="f" * 64, outputs={"report": f"select/{'a' * 16}/report.html"},
        metrics=metrics, duration_seconds=123.45, result_uri="select/result.json",
        checkpoint_digest="c" * 64,
    )  # fmt: skip


def status_of(result: StageResult) -> SearchStatus:
    """status.search as the planner makes it from the Job's termination message."""
    compact = result.compact()
    assert len(compact.encode()) <= TERMINATION_MESSAGE_LIMIT
    body = json.loads(compact)
    status = search_status(
        spec_of(search=SEARCH), ModelOptimizationStatus(), body, [], "s3://b/runs/ns/demo"
    )
    assert status is not None
    return status


def test_two_dozen_candidates_reach_status_whole() -> None:
    rows = [row(i) for i in range(24)]
    status = status_of(select_result(rows, chosen=rows[20]["name"]))
    assert [c.name for c in status.candidates] == [r["name"] for r in rows]
    assert status.chosen == rows[20]["name"] and status.chosen_speedup is not None
    assert status.selected_ir == "s3://b/runs/ns/demo/selected/model.xml"
    assert "more candidates" not in status.message
    first = status.candidates[1]
    assert first.accuracy_before_int8 == 0.9123 and first.accuracy_after_int8 == 0.9012
    assert first.accuracy_drop == 1.222 and first.size_bytes == 12_345_678
    assert first.flops_reduction == round(rows[1]["flopsReduction"], 3)
    assert first.within_budget is False and first.state == "Measured" and first.round == 0
    assert status.candidates[3].within_budget is True


def test_the_largest_search_keeps_a_bounded_list_and_the_chosen_one() -> None:
    # 16 listed targets and 5 refinement rounds of 8: the most a spec allows
    rows = [row(i) for i in range(56)]
    chosen = rows[0]["name"]  # from the earliest round, which goes first when space runs out
    status = status_of(select_result(rows, chosen=chosen))
    listed = {c.name for c in status.candidates}
    assert len(listed) >= 40 and chosen in listed and rows[-1]["name"] in listed
    omitted = 56 - len(listed)
    assert omitted == 0 or f"({omitted} more candidates in the report)" in status.message


def test_failed_candidates_and_old_results_unpack() -> None:
    failed = {"name": "t3000", "target": 0.3, "round": 0, "state": "Failed"}
    rows = unpack_table({"candidateTable": pack_table([failed]), "maxAccuracyDrop": 0.01})
    assert rows == [{"name": "t3000", "target": 0.3, "round": 0, "state": "Failed"}]
    # a select result written before the table was packed
    old = {"candidates": [{"name": "t5000", "target": 0.5, "state": "Measured"}]}
    assert unpack_table(old) == old["candidates"]
