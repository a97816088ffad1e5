#!/opt/venv/bin/python
"""The stand-in stage of the cluster tests: follows the stage contract of `kubeslim stage`
(progress lines on stdout, <artifacts>/<stage>/result.json, the compact StageResult as
termination message, exit 1 with "error: ..." on failure, 2 on bad input, 75 on a
transient error) in a fraction of a second, taking its orders from the control.json a
test puts in the resource's artifacts folder, so a test can hold a stage (until a release
file appears) or make it fail, without timing.

    kubeslim-standin stage NAME --spec-json J --artifacts DIR --result-file F [--candidate C]

It runs in the stand-in image (tests/images/standin.Dockerfile: this file on the runtime
image as /usr/local/bin/kubeslim-standin, so Pods run it as user 10001 with a read-only
root filesystem) or, with --node=fake, with the checkout's Python. It imports nothing
from tests/: only kubeslim's StageResult, which both have.

control.json (all keys optional; no file means a plain success):
- "gate": stages held until <artifacts>/release-<gate> exists; a search candidate's
  stage is gated as "<stage>-<candidate>".
- "fail": {stage: message}, exit 1; "bad_input": {stage: error}, exit 2 with the error
  as result; "transient": [stage], the first try exits 75 (an S3 hiccup).
- "share": true, each result names an entry of the shared cache (cache_key), as the real
  stage's results do, so that other resources with the same inputs reuse the stage.

`kubeslim-standin clean --artifacts DIR` is the real `kubeslim clean` (the cleanup Job).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

OUTPUTS = {
    "prune": {"model": "model.pt"},
    "convert": {"onnx": "model.onnx", "ir": "model.xml"},
    "quantize": {"int8_ir": "int8.xml"},
    "benchmark": {"report": "report.json"},
}
# A search candidate's one output per stage (tests/test_search_cluster.py).
CANDIDATE_OUTPUTS = {"prune": "model.pt", "convert": "model.xml", "quantize": "model_int8.xml"}
BENCHMARK_METRICS = {
    "baseline": {"accuracy": 0.9, "throughputFps": 100.0, "sizeBytes": 4000},
    "optimized": {"accuracy": 0.89, "throughputFps": 300.0, "sizeBytes": 1000},
}


def commit_result(
    stage: str,
    artifacts: Path,
    result_file: str,
    outputs: dict[str, str],
    metrics: dict[str, Any],
    cache_key: str | None = None,
) -> int:
    """Write <artifacts>/<stage>/result.json and the compact result; return exit code 0."""
    from kubeslim.stages.result import StageResult

    out = artifacts / stage
    out.mkdir(parents=True, exist_ok=True)
    result = StageResult(
        stage=stage,
        fingerprint="standin",
        outputs={k: str(out / v) for k, v in outputs.items()},
        metrics=metrics,
        duration_seconds=0.1,
        result_uri=str(out / "result.json"),
        cache_key=cache_key,
    )
    (out / "result.json").write_text(result.model_dump_json())
    Path(result_file).write_text(result.compact())
    return 0


def select_metrics(spec_json: str, artifacts: Path, control: dict[str, Any]) -> dict[str, Any]:
    """What the select stage reports for a search, replaying the rounds as it does: each
    round whose candidates all finished is measured (drop 4 x target points, speedup
    1 + 2 x target); the first unfinished round is handed back as nextRound; with none
    left, the fastest candidate within maxAccuracyDrop is chosen. Round 0 is the spec's
    targets; control.json's "rounds" names the refinement rounds a test wants."""
    search = json.loads(spec_json)["search"]
    budget = 100 * search["maxAccuracyDrop"]
    targets = search.get("targets") or _grid(search["range"], search["candidatesPerRound"])
    rounds = [[f"t{round(t * 10000):04d}" for t in targets], *control.get("rounds", [])]
    rows: list[dict[str, Any]] = []
    pending: list[str] = []
    for k, names in enumerate(rounds):
        if not all((artifacts / "candidates" / n / "quantize" / "result.json").exists()
                   for n in names):  # fmt: skip
            pending = names
            break
        for n in names:
            t = int(n[1:]) / 10000
            rows.append({"name": n, "target": t, "round": k, "state": "Measured",
                         "accuracyDrop": round(4 * t, 3), "speedup": round(1 + 2 * t, 3),
                         "withinBudget": 4 * t <= budget + 1e-9})  # fmt: skip
    inside = [r for r in rows if r["withinBudget"]]
    chosen = max(inside, key=lambda r: r["speedup"])["name"] if inside and not pending else None
    return {"outcome": "Searching" if pending else "Selected", "chosen": chosen,
            "candidates": rows, "nextRound": pending, "maxAccuracyDrop": search["maxAccuracyDrop"],
            "message": f"chose {chosen}" if chosen else "searching"}  # fmt: skip


def _grid(bounds: dict[str, float], k: int) -> list[float]:
    """A range search's first round, as kubeslim.planner.search.first_round makes it."""
    lo, hi = bounds["min"], bounds["max"]
    return [(lo + hi) / 2] if k == 1 else [lo + (hi - lo) * i / (k - 1) for i in range(k)]


def run_stage(argv: list[str]) -> int:
    stage = argv[1]
    opts = dict(zip(argv[2::2], argv[3::2], strict=False))
    artifacts = Path(opts["--artifacts"])
    artifacts.mkdir(parents=True, exist_ok=True)
    control_file = artifacts / "control.json"
    control = json.loads(control_file.read_text()) if control_file.exists() else {}
    candidate = opts.get("--candidate", "")
    for step in range(1, 4):
        progress = {"phase": "work", "step": step, "steps": 3, "loss": 1.0 / step}
        print("KUBESLIM_PROGRESS " + json.dumps(progress), flush=True)
    gate = f"{stage}-{candidate}" if candidate else stage
    if gate in control.get("gate", []):
        while not (artifacts / f"release-{gate}").exists():
            time.sleep(0.1)
    if stage in control.get("fail", {}):
        print(f"error: {control['fail'][stage]}", file=sys.stderr, flush=True)
        return 1
    if stage in control.get("bad_input", {}):
        # What `kubeslim stage` does on bad input: the error as termination message, exit 2.
        error = control["bad_input"][stage]
        Path(opts["--result-file"]).write_text(json.dumps({"stage": stage, "error": error}))
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    if stage in control.get("transient", []):
        tried = artifacts / f"tried-{stage}"
        if not tried.exists():  # the first try meets an S3 hiccup: exit 75, retried
            tried.touch()
            print("error: cannot reach the S3 endpoint", file=sys.stderr, flush=True)
            return 75
    if candidate:
        done = artifacts / "done"
        done.mkdir(exist_ok=True)
        with (done / f"{stage}-{candidate}").open("a") as runs:  # one line per run
            runs.write("ran\n")
        folder = artifacts / "candidates" / candidate
        outputs = {"out": CANDIDATE_OUTPUTS[stage]}
        return commit_result(stage, folder, opts["--result-file"], outputs, {})
    if stage == "select":
        metrics = select_metrics(opts["--spec-json"], artifacts, control)
        return commit_result(stage, artifacts, opts["--result-file"], {"report": "report.html"},
                             metrics)  # fmt: skip
    metrics = BENCHMARK_METRICS if stage == "benchmark" else {}
    key = f"{stage}/{stage[0] * 64}" if control.get("share") else None
    return commit_result(stage, artifacts, opts["--result-file"], OUTPUTS[stage], metrics, key)


if __name__ == "__main__":
    if sys.argv[1:2] == ["clean"]:
        from kubeslim.cli import main

        raise SystemExit(main(sys.argv[1:]))
    raise SystemExit(run_stage(sys.argv[1:]))
