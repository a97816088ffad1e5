"""`kubeslim run` with spec.search, end to end on real data (scikit-learn's digits):
three candidates in parallel processes, the select stage, selected/, the outcome
when no candidate meets the budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubeslim.planner.search import unpack_table
from tests.pipeline_helpers import kubeslim, manifest, write

# Training the baseline and a search of four candidates (a dozen stage processes)
# take about two minutes on two idle cores, many more on shared ones.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

SEARCH_SPEC: dict[str, Any] = {
    "dataset": {"tuningFraction": 0.2},
    "pruning": {"schedule": {"steps": 1}, "fineTune": {"epochs": 1}},
    "benchmark": {"durationSeconds": 0.2, "rounds": 2},
}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compact CNN trained on digits once for this module."""
    tmp = tmp_path_factory.mktemp("search-baseline")
    ckpt = tmp / "baseline.pt"
    doc = manifest(model={"checkpoint": str(ckpt)})
    trained = kubeslim(
        "train", str(write(tmp / "train.yaml", doc)), "--epochs", "4", "--lr", "0.05"
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    return ckpt


def search_manifest(tmp: Path, ckpt: Path | None, search: dict[str, Any], **over: Any) -> Path:
    sections = {**SEARCH_SPEC, **over}
    doc = manifest(
        "digits-search",
        model={"checkpoint": str(ckpt)} if ckpt else {},
        search=search,
        artifacts={"uri": str(tmp / "artifacts")},
        **sections,
    )
    return write(tmp / "search.yaml", doc)


def select_result(tmp: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((tmp / "artifacts" / "select" / "result.json").read_text())
    return result


@pytest.fixture(scope="module")
def three_targets(baseline: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("search-three")
    spec = search_manifest(
        tmp,
        baseline,
        {
            "targets": [0.3, 0.5, 0.7],
            "maxAccuracyDrop": 0.03,
            "parallelism": 2,
            "rounds": 1,
            "candidatesPerRound": 1,
        },
    )
    run = kubeslim("run", str(spec))
    assert run.returncode == 0, run.stderr[-3000:]
    return tmp, run.stdout + run.stderr


def test_search_selects_the_fastest_candidate_within_budget(
    three_targets: tuple[Path, str],
) -> None:
    tmp, out = three_targets
    result = select_result(tmp)
    m = result["metrics"]
    rows = {r["name"]: r for r in result["details"]["candidates"]}
    first = {n for n, r in rows.items() if r["round"] == 0}
    assert first == {"t3000", "t5000", "t7000"}
    # one refinement round, between the deepest target within budget and the
    # shallowest outside it (when the first round has both)
    inside = [rows[n]["target"] for n in first if rows[n]["withinBudget"]]
    outside = [rows[n]["target"] for n in first if not rows[n]["withinBudget"]]
    refined = [r["target"] for r in rows.values() if r["round"] == 1]
    if inside and outside and max(inside) < min(outside):
        assert len(refined) == 1 and max(inside) < refined[0] < min(outside)
    assert set(rows) == first | {n for n, r in rows.items() if r["round"] == 1}
    assert all(r["state"] == "Measured" for r in rows.values())
    assert m["outcome"] == "Selected", m["message"]
    chosen = rows[m["chosen"]]
    assert chosen["accuracyDrop"] <= 3.0 and chosen["withinBudget"]
    inside = [r for r in rows.values() if r["withinBudget"]]
    assert all(chosen["speedup"] >= r["speedup"] for r in inside)
    # the budget was judged on the tuning split, beside the test split's figures
    assert chosen["tuningImages"] < chosen["testImages"]
    assert chosen["accuracyAfterInt8"] == chosen["tuningAccuracy"]
    assert "kubeslim search" in out and f"chose {m['chosen']} (target" in out


def test_chosen_model_has_a_stable_uri_and_the_original_was_measured_once(
    three_targets: tuple[Path, str],
) -> None:
    tmp, _ = three_targets
    artifacts = tmp / "artifacts"
    m = select_result(tmp)["metrics"]
    selected = artifacts / "selected" / "model.xml"
    assert m["selectedIr"] == "selected/model.xml"  # relative to the artifacts root
    chosen_ir = next((artifacts / "candidates" / m["chosen"] / "quantize").glob("*/model_int8.xml"))
    assert selected.read_bytes() == chosen_ir.read_bytes()
    assert (selected.with_suffix(".bin")).read_bytes() == chosen_ir.with_suffix(".bin").read_bytes()
    assert (
        json.loads((artifacts / "selected" / "selection.json").read_text())["chosen"] == m["chosen"]
    )
    # shared work once: one measurement of the original for the whole search
    assert len(list((artifacts / "select" / "measure").glob("baseline-*.json"))) == 1
    # the last round's report (each round's select run wrote its own)
    report = (artifacts / select_result(tmp)["outputs"]["report"]).read_text()
    assert "<svg" in report and m["chosen"] in report


def test_the_baseline_ir_is_exported_once_for_all_candidates(
    three_targets: tuple[Path, str],
) -> None:
    tmp, _ = three_targets
    artifacts = tmp / "artifacts"
    converts = [
        json.loads(p.read_text())["metrics"]
        for p in sorted(artifacts.glob("candidates/*/convert/result.json"))
    ]
    # every candidate: the three targets, and a refinement when the first round had
    # targets on both sides of the budget (with BatchNorm re-estimated, all three can fit)
    candidates = select_result(tmp)["details"]["candidates"]
    assert len(converts) == len(candidates) >= 3
    assert [m["baselineReused"] for m in converts].count(False) == 1
    assert len({m["baselineHash"] for m in converts}) == 1
    # one entry in the shared cache, one copy in the search root, none per candidate
    assert len(list(artifacts.glob("cache/baseline-ir/*/baseline.xml"))) == 1
    assert len(list(artifacts.glob("baseline/*/baseline.xml"))) == 1
    assert not list(artifacts.glob("candidates/*/convert/*/baseline.xml"))


def test_select_is_reused_until_a_candidate_changes(three_targets: tuple[Path, str]) -> None:
    tmp, _ = three_targets
    again = kubeslim(
        "stage", "select", "--manifest", str(tmp / "search.yaml"), "--progress", "none"
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stage select: reused" in again.stderr


def test_a_budget_no_candidate_meets_names_the_closest(baseline: Path, tmp_path: Path) -> None:
    # Deep cuts without fine-tuning lose far more than 0.1 points.
    spec = search_manifest(
        tmp_path,
        baseline,
        {"targets": [0.8, 0.9], "maxAccuracyDrop": 0.001, "parallelism": 2},
        pruning={"schedule": {"steps": 1}, "fineTune": {"epochs": 0}},
    )
    run = kubeslim("run", str(spec))
    assert run.returncode == 3, run.stderr[-3000:]
    m = select_result(tmp_path)["metrics"]
    assert m["outcome"] == "NoCandidateWithinBudget"
    assert m["chosen"] is None and m["closest"] in {"t8000", "t9000"}
    assert f"closest is {m['closest']}" in run.stdout + run.stderr
    assert not (tmp_path / "artifacts" / "selected" / "model.xml").exists()


def test_select_when_every_candidate_failed_says_so(tmp_path: Path) -> None:
    spec = search_manifest(tmp_path, None, {"targets": [0.3, 0.5], "maxAccuracyDrop": 0.01})
    for name in ("t3000", "t5000"):
        folder = tmp_path / "artifacts" / "candidates" / name
        folder.mkdir(parents=True)
        (folder / "failed.json").write_text(json.dumps({"stage": "prune", "error": "error: x"}))
    run = kubeslim("stage", "select", "--manifest", str(spec), "--progress", "none")
    assert run.returncode == 0, run.stderr[-2000:]
    m = select_result(tmp_path)["metrics"]
    assert m["outcome"] == "NoCandidateWithinBudget" and m["closest"] is None
    assert m["message"] == "no candidate within 1.00 points: every candidate failed"
    assert [c["state"] for c in unpack_table(m)] == ["Failed", "Failed"]


def test_report_command_writes_the_page(three_targets: tuple[Path, str]) -> None:
    tmp, _ = three_targets
    out = tmp / "written.html"
    run = kubeslim("report", str(tmp / "search.yaml"), "--output", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == str(out) and out.read_text().count("<svg") == 3
