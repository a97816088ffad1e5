"""The search, locally: candidates as parallel `kubeslim stage --candidate` processes,
then the select stage, round after round, and the candidate table.

Which candidates run is decided by kubeslim.planner.search (first round) and by the
select stage's `nextRound` (refinements), so a cluster and a laptop search alike.
"""

from __future__ import annotations

import os
import webbrowser
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kubeslim.api.manifest import load_manifest
from kubeslim.api.spec import ModelOptimizationSpec, SearchSpec
from kubeslim.errors import KubeslimError
from kubeslim.executors.local import StageRun, _report_failure, _run_child
from kubeslim.planner.search import (
    Candidate,
    candidate_from_name,
    candidate_prefix,
    first_round,
    unpack_table,
)
from kubeslim.stages.distributed import world_size
from kubeslim.stages.result import StageResult
from kubeslim.store import ArtifactStore, open_store
from kubeslim.store.refs import resolve

CANDIDATE_STAGES = ("prune", "convert", "quantize")
SELECT_RESULT = "select/result.json"
EXIT_NO_CANDIDATE = 3  # the search ran, but no candidate met the accuracy budget


def workers(search: SearchSpec, cpus: int | None = None) -> int:
    """Candidates at once: the spec's parallelism, at most one per core."""
    return max(1, min(search.parallelism, cpus or os.cpu_count() or 1))


def run_search(
    manifest: str,
    spec: ModelOptimizationSpec,
    store: ArtifactStore,
    force: bool = False,
    quiet: bool = False,
) -> int:
    """Every round of the search, then the candidate table; 0, or the failing exit code."""
    assert spec.search is not None
    console = Console(stderr=True, quiet=quiet)
    console.print(f"[bold]kubeslim run[/] search -> {store.root}")
    progress = Progress(
        TextColumn("{task.fields[name]:<16}"),
        TextColumn("{task.fields[state]:<9}"),
        BarColumn(bar_width=20),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
    )
    pending, ran = first_round(spec.search), set[str]()
    with progress:
        while pending:
            if ran & {c.name for c in pending}:
                raise KubeslimError(f"search: round {pending[0].round} repeats candidates")
            ran |= {c.name for c in pending}
            _run_round(manifest, store, spec, pending, force, progress)
            run = _run_select(manifest, store, force, progress)
            if run.code != 0:
                progress.stop()
                return _report_failure("select", run, console)
            metrics = StageResult.model_validate(store.read_json(SELECT_RESULT)).metrics
            pending = [candidate_from_name(n) for n in metrics.get("nextRound", [])]
    result = StageResult.model_validate(store.read_json(SELECT_RESULT))
    print_candidates(result, Console(), store.root)
    report = result.outputs.get("report")
    if report:
        # results name outputs by key below the root (older ones by full URI)
        Console().print(f"report: {report if '://' in report else store.uri(report)}")
    return 0 if result.metrics.get("chosen") else EXIT_NO_CANDIDATE


def _run_round(
    manifest: str,
    store: ArtifactStore,
    spec: ModelOptimizationSpec,
    round_: list[Candidate],
    force: bool,
    progress: Progress,
) -> None:
    assert spec.search is not None
    n = workers(spec.search)
    # Each process gets its share of the cores (a multi-worker prune runs world_size
    # of them per candidate), so parallel candidates do not thrash.
    share = (os.cpu_count() or 1) // (n * world_size(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, share))}
    with ThreadPoolExecutor(max_workers=n) as pool:
        jobs = [
            pool.submit(_run_candidate, manifest, store, spec, c, force, progress, env)
            for c in round_
        ]
        for job in jobs:
            job.result()


def _run_candidate(
    manifest: str,
    store: ArtifactStore,
    spec: ModelOptimizationSpec,
    cand: Candidate,
    force: bool,
    progress: Progress,
    env: dict[str, str],
) -> None:
    """prune, convert, quantize for one candidate; a failure leaves failed.json for select.
    Its prune runs as the spec's pruning.distributed says (torchrun for many processes),
    as a plain run's does."""
    marker = f"{candidate_prefix(cand.name)}/failed.json"
    store.delete(marker)
    task = progress.add_task("", name=f"{cand.name} ({cand.target:g})", state="running",
                             detail="", total=len(CANDIDATE_STAGES))  # fmt: skip
    for i, stage in enumerate(CANDIDATE_STAGES):
        progress.update(task, detail=stage)
        run = _run_child(stage, manifest, store.root, force, progress, task,
                         extra=["--candidate", cand.name], env=env, spec=spec)  # fmt: skip
        if run.code != 0:
            store.write_json(marker, {"stage": stage, "error": _last_error(run)})
            progress.update(task, state="[red]failed[/]", detail=stage)
            return
        progress.update(task, completed=i + 1)
    progress.update(task, state="[green]done[/]", detail="")


def _last_error(run: StageRun) -> str:
    errors = [line for line in run.stderr_tail if line.startswith("error: ")]
    return (errors or run.stderr_tail or [f"exit code {run.code}"])[-1]


def _run_select(manifest: str, store: ArtifactStore, force: bool, progress: Progress) -> StageRun:
    task = progress.add_task("", name="select", state="running", detail="", total=None)
    run = _run_child("select", manifest, store.root, force, progress, task)
    progress.update(task, state="[green]done[/]" if run.code == 0 else "[red]failed[/]",
                    total=1, completed=1)  # fmt: skip
    return run


def print_candidates(result: StageResult, console: Console, root: str) -> None:
    """Every candidate, the chosen one marked, and the outcome (root: the artifacts
    root the result's references are relative to)."""
    m = result.metrics
    budget = float(m.get("maxAccuracyDrop", 0)) * 100
    table = Table(
        title=f"kubeslim search: objective {m.get('objective')}, budget {budget:.2f} points "
        "(tuning split)"
    )
    cols = ("candidate", "target", "round", "FLOPs cut", "acc. before INT8", "acc. after INT8",
            "drop (pt)", "speedup", "size", "in budget")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "candidate" else "right")
    rows = sorted(result.details.get("candidates") or unpack_table(m), key=lambda r: r["target"])
    for r in rows:
        mark = " *" if r["name"] == m.get("chosen") else ""
        table.add_row(
            r["name"] + mark, f"{r['target']:g}", str(r.get("round", 0)),
            _fmt(r.get("flopsReduction") and r["flopsReduction"] * 100, "{:.1f}%"),
            _fmt(r.get("accuracyBeforeInt8") and r["accuracyBeforeInt8"] * 100, "{:.2f}%"),
            _fmt(r.get("accuracyAfterInt8") and r["accuracyAfterInt8"] * 100, "{:.2f}%"),
            _fmt(r.get("accuracyDrop"), "{:.2f}"), _fmt(r.get("speedup"), "{:.2f}x"),
            _fmt(r.get("sizeBytes") and r["sizeBytes"] / 1e6, "{:.2f} MB"),
            {True: "yes", False: "no"}.get(r.get("withinBudget"), r.get("state", "-")),
        )  # fmt: skip
    console.print(table)
    console.print(str(m.get("message", "")))
    if m.get("selectedIr"):
        console.print(f"selected model: {resolve(root, m['selectedIr'])}")


def _fmt(value: Any, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def report_command(manifest: str, artifacts: str | None, output: str, open_it: bool) -> int:
    """`kubeslim report`: render the stored select result as HTML, write it, maybe open it."""
    from kubeslim.report.html import render

    spec = load_manifest(manifest).spec
    store = open_store(artifacts or spec.artifacts.uri)
    if not store.exists(SELECT_RESULT):
        raise KubeslimError(f"{store.uri(SELECT_RESULT)}: no search result; run the search first")
    result = store.read_json(SELECT_RESULT)
    path = Path(output)
    path.write_text(render({"metrics": result["metrics"], "details": result["details"]}))
    print(path.resolve())
    if open_it:
        webbrowser.open(path.resolve().as_uri())
    return 0
