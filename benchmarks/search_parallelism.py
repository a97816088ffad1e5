"""Wall time of a 4-candidate search with parallelism 1, 2 and 4, as ratios.

The compact CNN on scikit-learn's digits, trained once and cached in the benchmark
work dir; each run starts from an empty artifacts dir and shared cache, so nothing is
reused between parallelism settings.

- local (default): `kubeslim run`, candidates as processes. The number of cores caps
  parallelism (executors/search.py), so on a 2-core machine parallelism 4 runs two
  candidates at once, as 2 does; the result file records the effective number.
- `--cluster`: the test control plane of tests/cluster/rig.py (its kubelet runs each
  Pod as local processes), the operator with the real `kubeslim stage` as the stage
  command; wall time from apply to Succeeded. No core cap: parallelism 4 runs four
  candidate Jobs at once on the same cores.

    .venv/bin/python -m benchmarks.search_parallelism [--parallelism 1 2 4] [--cluster]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import WORK, header, save
from kubeslim.api.spec import SearchSpec
from kubeslim.executors.search import workers

TARGETS = [0.2, 0.4, 0.6, 0.8]
MOUNT = "/kubeslim-artifacts"  # where the stage Pods see the artifacts claim (--cluster)


def spec(ckpt: Path, artifacts: Path, parallelism: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeslim.dev/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": "search-parallelism"},
        "spec": {
            "model": {
                "entryPoint": "kubeslim.models.compact:compact_resnet",
                "numClasses": 10,
                "inputShape": [1, 16, 16],
                "checkpoint": str(ckpt),
            },
            "dataset": {
                "name": "digits",
                "mean": [0.3],
                "std": [0.4],
                "calibrationSize": 100,
                "tuningFraction": 0.2,
            },
            "pruning": {"schedule": {"steps": 1}, "fineTune": {"epochs": 1, "batchSize": 64}},
            "quantization": {"subsetSize": 100},
            "benchmark": {"durationSeconds": 0.2, "rounds": 2},
            "search": {"targets": TARGETS, "maxAccuracyDrop": 0.03, "parallelism": parallelism},
            "artifacts": {"uri": str(artifacts)},
        },
    }


def kubeslim(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "kubeslim", *args], capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr[-3000:]
        raise SystemExit(f"kubeslim {' '.join(args)}: exit {done.returncode}\n{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallelism", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--cluster", action="store_true", help="through the operator")
    args = parser.parse_args()
    work = WORK / "search-parallelism"
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "baseline.pt"
    first = work / "search.yaml"
    first.write_text(yaml.safe_dump(spec(ckpt, work / "artifacts", 1)))
    kubeslim("train", str(first), "--epochs", "4", "--lr", "0.05", "--if-missing")
    rows = on_cluster(work, ckpt, args.parallelism) if args.cluster else local(work, ckpt, args)
    base = rows[0]["wallSeconds"]
    for row in rows:
        row["speedupOverFirst"] = round(base / row["wallSeconds"], 2)
    where = "test cluster (tests/cluster/rig.py)" if args.cluster else "local (kubeslim run)"
    name = "search_parallelism_cluster" if args.cluster else "search_parallelism"
    note = ("one run per setting on cores shared with other sessions' builds and tests: "
            "loadAverage1m at each run's start and end says how busy they were")  # fmt: skip
    save(name, {**header(), "where": where, "cores": os.cpu_count(), "candidates": len(TARGETS),
                "note": note, "runs": rows})  # fmt: skip
    return 0


def local(work: Path, ckpt: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for p in args.parallelism:
        artifacts = work / f"artifacts-p{p}"
        shutil.rmtree(artifacts, ignore_errors=True)
        manifest = work / f"search-p{p}.yaml"
        manifest.write_text(yaml.safe_dump(spec(ckpt, artifacts, p)))
        load, started = os.getloadavg()[0], time.monotonic()
        kubeslim("run", str(manifest), "--quiet")
        wall = time.monotonic() - started
        search = SearchSpec(targets=TARGETS, max_accuracy_drop=0.03, parallelism=p)
        rows.append({"parallelism": p, "effective": workers(search), "wallSeconds": round(wall, 1),
                     "loadAverage1m": [round(load, 2), round(os.getloadavg()[0], 2)]})  # fmt: skip
        print(f"parallelism {p}: {wall:.1f} s", file=sys.stderr)
    return rows


def on_cluster(work: Path, ckpt: Path, parallelism: list[int]) -> list[dict[str, Any]]:
    """Each setting as one ModelOptimization through the operator, one after another."""
    from kubernetes import client
    from tests.cluster.cluster import Cluster
    from tests.cluster.rig import Rig, binaries_dir

    root = Path(__file__).resolve().parent.parent
    fresh = Path(tempfile.mkdtemp(prefix="rig-", dir=work))  # a new etcd every run
    rig = Rig(binaries_dir(), fresh)
    rig.start()
    try:
        cluster = Cluster(rig.kubeconfig, fresh, rig)
        cluster.apply(root / "crds" / "modeloptimizations.kubeslim.dev.yaml")
        cluster.wait_crd_established("modeloptimizations.kubeslim.dev")
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
        custom = client.CustomObjectsApi(cluster.api_client())
        stage = str(Path(sys.executable).parent / "kubeslim")
        operator = cluster.start_process(
            [sys.executable, "-m", "kubeslim", "operator", "--namespace", "bench"],
            env={
                "KUBESLIM_STAGE_COMMAND": stage,
                "KUBESLIM_MAX_CONCURRENT": "0",
                "PYTHONUNBUFFERED": "1",
            },
            name="kubeslim-operator",
        )
        operator.wait_for_output("watching bench", timeout=60)
        rows = []
        for p in parallelism:
            # Local paths reach the stage Pods only through the artifacts volume, mounted
            # at artifacts.uri: the checkpoint goes there too.
            claim = cluster.pvc_dir("bench", "artifacts")
            shutil.rmtree(claim / "bench" / f"search-p{p}", ignore_errors=True)
            # The resources share artifacts.uri, hence its cache of stage outputs: emptied,
            # or every run after the first would copy the candidates instead of computing.
            shutil.rmtree(claim / "cache", ignore_errors=True)
            shutil.copyfile(ckpt, claim / "baseline.pt")
            body = spec(Path(f"{MOUNT}/baseline.pt"), Path(MOUNT), p)
            body["spec"]["artifacts"]["volume"] = {"claimName": "artifacts"}
            body["metadata"] = {"name": f"search-p{p}", "namespace": "bench"}
            body["spec"]["execution"] = {"backoffLimit": 0}
            load, started = os.getloadavg()[0], time.monotonic()
            custom.create_namespaced_custom_object(
                "kubeslim.dev", "v1alpha1", "bench", "modeloptimizations", body
            )
            state = wait_done(custom, f"search-p{p}")
            wall = time.monotonic() - started
            if state != "Succeeded":
                raise SystemExit(f"search-p{p} ended {state}:\n{operator.tail(3000)}")
            loads = [round(load, 2), round(os.getloadavg()[0], 2)]
            row = {"parallelism": p, "effective": p, "wallSeconds": round(wall, 1)}
            rows.append({**row, "loadAverage1m": loads})
            print(f"cluster, parallelism {p}: {wall:.1f} s", file=sys.stderr)
        return rows
    finally:
        rig.stop()
        shutil.rmtree(fresh, ignore_errors=True)  # etcd's data: nothing to keep


def wait_done(custom: Any, name: str, timeout: float = 3600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = custom.get_namespaced_custom_object(
            "kubeslim.dev", "v1alpha1", "bench", "modeloptimizations", name
        )
        state = str((obj.get("status") or {}).get("state", ""))
        if state in ("Succeeded", "Failed"):
            return state
        time.sleep(2)
    return "TimedOut"


if __name__ == "__main__":
    raise SystemExit(main())
