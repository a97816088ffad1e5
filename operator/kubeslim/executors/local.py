"""The local executor: each stage as a child process running `kubeslim stage`,
the same entry point a Job runs, with live progress and a final table."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kubeslim.api.manifest import load_manifest
from kubeslim.api.spec import ModelOptimizationSpec
from kubeslim.progress import parse_progress
from kubeslim.stages.distributed import local_command, world_size
from kubeslim.stages.pipeline import STAGES, stage_enabled
from kubeslim.stages.result import StageResult
from kubeslim.store import open_store

RESULT_MARKER = "KUBESLIM_RESULT "


@dataclass
class StageRun:
    """The outcome of one child process."""

    code: int
    result: dict[str, Any] | None
    stderr_tail: list[str]


def run_pipeline(
    manifest_path: str, artifacts: str | None = None, force: bool = False, quiet: bool = False
) -> int:
    """Run every enabled stage in order; stop at the first failure."""
    manifest = load_manifest(manifest_path)
    spec = manifest.spec
    uri = artifacts or spec.artifacts.uri
    store = open_store(uri)  # fails fast on a bad URI or missing credentials
    if spec.search is not None:
        from kubeslim.executors.search import run_search

        return run_search(manifest_path, spec, store, force=force, quiet=quiet)
    console = Console(stderr=True, quiet=quiet)
    console.print(f"[bold]kubeslim run[/] {manifest.metadata.name} -> {store.root}")
    progress = Progress(
        TextColumn("{task.fields[stage]:<10}"),
        TextColumn("{task.fields[state]:<9}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=False,
    )
    tasks = {
        s: progress.add_task(
            "",
            stage=s,
            state="pending" if stage_enabled(spec, s) else "skipped",
            detail="",
            total=None,
            start=False,
        )
        for s in STAGES
    }
    with progress:
        for stage in STAGES:
            if not stage_enabled(spec, stage):
                continue
            task = tasks[stage]
            progress.start_task(task)
            progress.update(task, state="running")
            run = _run_child(stage, manifest_path, store.root, force, progress, task, spec=spec)
            if run.code != 0:
                progress.update(task, state="[red]failed[/]")
                progress.stop()
                return _report_failure(stage, run, console)
            reused = bool(run.result and run.result.get("reused"))
            seconds = (run.result or {}).get("duration_seconds", 0.0)
            progress.update(
                task,
                state="reused" if reused else "[green]done[/]",
                detail=f"{'cached' if reused else f'{seconds:.1f}s'}",
                total=1,
                completed=1,
            )
            progress.stop_task(task)
    _print_summary(store, spec.benchmark.enabled, console)
    return 0


def _run_child(
    stage: str,
    manifest: str,
    artifacts: str,
    force: bool,
    progress: Progress,
    task: Any,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    spec: ModelOptimizationSpec | None = None,
) -> StageRun:
    with tempfile.NamedTemporaryFile(prefix=f"kubeslim-{stage}-", suffix=".json") as result_file:
        cmd = [
            sys.executable,
            "-m",
            "kubeslim",
            "stage",
            stage,
            "--manifest",
            manifest,
            "--artifacts",
            artifacts,
            "--progress",
            "log",
            "--result-file",
            result_file.name,
        ]
        if force:
            cmd.append("--force")
        cmd.extend(extra)
        if spec is not None and stage == "prune" and world_size(spec) > 1:
            # The same entry point on every worker, started by torchrun (gloo on the CPU).
            cmd = local_command(spec, cmd[3:], sys.executable)
        stderr_tail: deque[str] = deque(maxlen=40)
        with tempfile.TemporaryFile(mode="w+") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
            result = None
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(RESULT_MARKER):
                    result = json.loads(line[len(RESULT_MARKER) :])
                elif (state := parse_progress(line)) is not None:
                    _show(progress, task, state)
            code = proc.wait()
            err.seek(0)
            stderr_tail.extend(err.read().splitlines())
    return StageRun(code, result, list(stderr_tail))


def _show(progress: Progress, task: Any, state: dict[str, Any]) -> None:
    detail = str(state.get("phase", ""))
    if state.get("epoch") is not None:
        detail += f" epoch {state['epoch']}/{state.get('epochs', '?')}"
    if state.get("loss") is not None:
        detail += f" loss {state['loss']:.3f}"
    if state.get("accuracy") is not None:
        detail += f" acc {state['accuracy']:.4f}"
    if state.get("resumedFrom") is not None:
        detail += f" (resumed at step {state['resumedFrom']})"
    if state.get("imagesPerSecondPerWorker") is not None:
        detail += f" {state['imagesPerSecondPerWorker']:,.0f} img/s/worker"
        detail += f" loader wait {state.get('loaderWaitShare', 0.0):.0%}"
    if state.get("steps"):
        progress.update(task, total=state["steps"], completed=state.get("step", 0))
    progress.update(task, detail=detail)


def _report_failure(stage: str, run: StageRun, console: Console) -> int:
    errors = [line for line in run.stderr_tail if line.startswith("error: ")]
    if run.code == 2 and errors:
        print(errors[-1], file=sys.stderr)
        return 2
    console.print(f"[red]stage {stage} failed (exit code {run.code}); last output:[/]")
    for line in run.stderr_tail[-15:]:
        console.print(f"  {line}", markup=False, highlight=False)
    return 1


def _print_summary(store: Any, benchmarked: bool, console: Console) -> None:
    if not benchmarked or not store.exists("benchmark/result.json"):
        console.print("done (no benchmark requested)")
        return
    result = StageResult.model_validate(store.read_json("benchmark/result.json"))
    # Wide enough for every column when stdout is a pipe (rich assumes 80 then).
    print_table(result, Console(width=None if sys.stdout.isatty() else 130))


def print_table(result: StageResult, console: Console) -> None:
    """The before -> after table of the benchmark stage."""
    m = result.metrics
    rows = result.details.get("models", [])
    rounds = result.details.get("rounds")
    batches = sorted({b for row in rows for b in row.get("throughput", {})}, key=int)
    test_n = rows[0].get("testImages") if rows else None
    table = Table(
        title=f"kubeslim: before -> after (OpenVINO CPU; speed: median of {rounds} "
        "interleaved rounds)"
    )
    columns = ["model", "precision", "accuracy (test)", "accuracy (tuning)", "latency p50"]
    columns += [f"img/s @{b}" for b in batches] + ["size", "GFLOPs", "params"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "precision") else "right")
    for row in rows:
        table.add_row(
            row["model"],
            row.get("precision", "-"),
            f"{row['accuracy'] * 100:.2f}%",
            _fmt(row.get("tuningAccuracy") and row["tuningAccuracy"] * 100, "{:.2f}%"),
            _fmt(row.get("latencyMsP50"), "{:.3f} ms"),
            *(_fmt(row.get("throughput", {}).get(b), "{:,.0f}") for b in batches),
            f"{row['sizeBytes'] / 1e6:.2f} MB",
            _fmt(row.get("flops") and row["flops"] / 1e9, "{:.3f}"),
            _fmt(row.get("params") and row["params"] / 1e6, "{:.2f} M"),
        )
    console.print(table)
    for label, ratios in result.details.get("ratios", {}).items():
        speed = ", ".join(
            f"batch {b} {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
            for b, r in ratios.items()
            if b != "latency" and r
        )
        lat = ratios.get("latency")
        lat_text = f"; latency {lat['median']:.2f}x" if lat else ""
        console.print(f"{label} vs original: throughput {speed or '-'}{lat_text}")
    console.print(
        f"size {_fmt(m.get('sizeReduction'), '{:.2f}x')} smaller than the original as FP16 IR "
        f"({_fmt(m.get('sizeReductionVsFp32'), '{:.2f}x')} vs its FP32 IR); accuracy drop "
        f"{m['accuracyDrop']:.2f} points on the test split ({_fmt(test_n, '{:,}')} images)"
        + _fmt_tail(m.get("tuningAccuracyDrop"))
    )
    console.print(
        f"speed ratios: median (min-max) of per-round ratios; float layers in {m['precision']}"
    )


def _fmt_tail(tuning_drop: Any) -> str:
    return "" if tuning_drop is None else f", {tuning_drop:.2f} on the tuning split"


def _fmt(value: Any, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
