"""The operator at scale: apply-to-first-Job time and memory with N ModelOptimizations.

Starts the test control plane exactly as the `k8s_cluster` fixture does
(tests/cluster/rig.py: etcd, kube-apiserver, kube-controller-manager, fake
kubelet), then stops the fake kubelet so the stage Jobs' Pods stay Pending:
what is measured is the operator alone, not N stage processes fighting for two
cores. The operator (`python -m kubeslim operator`, admin kubeconfig,
KUBESLIM_MAX_CONCURRENT=0 so no resource waits for a slot) runs as a
subprocess; a watch on Jobs records when each resource's first Job arrives.

1. one resource alone: apply -> first Job;
2. N resources applied back to back: apply -> first Job per resource
   (p50/p90/max), and the operator's resident memory (peak VmHWM and the
   RSS once every resource has its Job).

    .venv/bin/python -m benchmarks.operator_scale [--count 100]

3. with --waiting N: one resource holds the only slot (KUBESLIM_MAX_CONCURRENT=1)
   and N more wait behind it; the API server's request rate (apiserver_request_total,
   every client) over a window with the operator idle, then with the N waiting.

    .venv/bin/python -m benchmarks.operator_scale --waiting 1000
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import header, save

ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = ROOT / "crds" / "modeloptimizations.kubeslim.dev.yaml"
GROUP, VERSION, PLURAL = "kubeslim.dev", "v1alpha1", "modeloptimizations"
LABEL = "kubeslim.dev/modeloptimization"
NAMESPACE = "bench"
SPEC: dict[str, Any] = {
    "model": {"architecture": "resnet18", "numClasses": 10, "inputShape": [1, 8, 8]},
    "dataset": {"name": "digits"},
    # Never written to (the Pods stay Pending); an s3:// root is what a cluster accepts
    # up front, where a local path without a shared volume is refused.
    "artifacts": {"uri": "s3://kubeslim-operator-scale/runs"},
}


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class JobWatch:
    """Local arrival time of each resource's first Job (a watch, not polling)."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.first: dict[str, float] = {}
        self.cond = threading.Condition()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stop:
            w = watch.Watch()
            for event in w.stream(self.batch.list_namespaced_job, NAMESPACE, timeout_seconds=5):
                owner = (event["object"].metadata.labels or {}).get(LABEL)
                if owner:
                    with self.cond:
                        self.first.setdefault(owner, time.monotonic())
                        self.cond.notify_all()

    def wait(self, names: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(n in self.first for n in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def stop(self) -> None:
        self._stop = True


def create(custom: Any, name: str) -> float:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelOptimization",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": SPEC,
    }
    t = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    return t


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


def run(count: int, work: Path) -> dict[str, Any]:
    from kubernetes import client
    from tests.cluster.cluster import Cluster
    from tests.cluster.rig import Rig, binaries_dir

    rig = Rig(binaries_dir(), work)
    rig.start()
    try:
        rig.processes.pop("kubelet").stop()  # Pods stay Pending: the operator alone is measured
        cluster = Cluster(rig.kubeconfig, work, rig)
        cluster.apply(CRD_FILE)
        cluster.wait_crd_established(f"{PLURAL}.{GROUP}")
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        api = cluster.api_client()
        custom, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)
        operator = cluster.start_process(
            [sys.executable, "-m", "kubeslim", "operator", "--namespace", NAMESPACE],
            env={"KUBESLIM_MAX_CONCURRENT": "0", "PYTHONUNBUFFERED": "1"},
            name="kubeslim-operator",
        )
        operator.wait_for_output("watching " + NAMESPACE, timeout=60)
        time.sleep(2)  # let the initial list settle
        idle_rss = proc_kib(operator.pid, "VmRSS")
        jobs = JobWatch(batch)
        t0 = create(custom, "single")
        jobs.wait(["single"], 60)
        single = round(jobs.first["single"] - t0, 3) if "single" in jobs.first else None
        names = [f"mo-{i:03d}" for i in range(count)]
        requests_before = api_requests(api)
        applied: dict[str, float] = {}
        rss_peak = 0
        start = time.monotonic()
        for name in names:
            applied[name] = create(custom, name)
            rss_peak = max(rss_peak, proc_kib(operator.pid, "VmRSS"))
        apply_s = time.monotonic() - start
        done = jobs.wait(names, 300)
        all_jobs_s = max(jobs.first.get(n, time.monotonic()) for n in names) - start
        time.sleep(5)
        requests_after = api_requests(api)
        per_resource = {
            k: round((v - requests_before.get(k, 0.0)) / count, 2)
            for k, v in requests_after.items()
            if v - requests_before.get(k, 0.0) >= count / 10
        }
        rss_after = proc_kib(operator.pid, "VmRSS")
        hwm = proc_kib(operator.pid, "VmHWM")
        jobs.stop()
        delays = [jobs.first[n] - applied[n] for n in names if n in jobs.first]
        return {
            "count": count,
            "allGotJobs": done,
            "withJob": len(delays),
            "singleApplyToFirstJobSeconds": single,
            "applySeconds": round(apply_s, 2),
            "lastJobAfterFirstApplySeconds": round(all_jobs_s, 2),
            "applyToFirstJobSeconds": {
                "p50": pct(delays, 0.5) if delays else None,
                "p90": pct(delays, 0.9) if delays else None,
                "p99": pct(delays, 0.99) if delays else None,
                "max": round(max(delays), 3) if delays else None,
                "mean": round(statistics.mean(delays), 3) if delays else None,
            },
            # Every client's requests (the benchmark's own creates and Job watch included)
            # from the first apply until 5 s after the last Job, per resource.
            "requestsPerResource": dict(sorted(per_resource.items(), key=lambda kv: -kv[1])),
            "operatorRssMiB": {
                "idle": round(idle_rss / 1024, 1),
                "peakDuringApply": round(rss_peak / 1024, 1),
                "afterAllJobs": round(rss_after / 1024, 1),
                "highWaterMark": round(hwm / 1024, 1),
            },
            "operatorLogTail": operator.tail(1500),
        }
    finally:
        rig.stop()


def api_requests(api: Any) -> dict[str, float]:
    """The API server's request counts so far by "VERB resource[/subresource]" (every
    client, from its /metrics)."""
    rsp = api.call_api("/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False)
    counts: dict[str, float] = {}
    for line in rsp.data.decode().splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            what = labels.get("resource", "") + (
                f"/{labels['subresource']}" if labels.get("subresource") else ""
            )
            key = f"{labels.get('verb', '?')} {what or labels.get('path', '?')}"
            counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def request_rate(api: Any, seconds: float) -> tuple[float, dict[str, float]]:
    """Requests per second over a window, in all and by verb and resource (busiest first)."""
    before = api_requests(api)
    time.sleep(seconds)
    after = api_requests(api)
    rates = {k: round((v - before.get(k, 0.0)) / seconds, 3) for k, v in after.items()}
    busiest = dict(sorted(((k, r) for k, r in rates.items() if r > 0), key=lambda kv: -kv[1]))
    return round(sum(rates.values()), 2), dict(list(busiest.items())[:12])


def run_waiting(count: int, work: Path, window: float, settle: float) -> dict[str, Any]:
    """N resources waiting behind one slot: the API requests per second they cost."""
    from kubernetes import client
    from tests.cluster.cluster import Cluster
    from tests.cluster.rig import Rig, binaries_dir

    rig = Rig(binaries_dir(), work)
    rig.start()
    try:
        rig.processes.pop("kubelet").stop()  # the one running Job's Pod stays Pending
        cluster = Cluster(rig.kubeconfig, work, rig)
        cluster.apply(CRD_FILE)
        cluster.wait_crd_established(f"{PLURAL}.{GROUP}")
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        api = cluster.api_client()
        custom = client.CustomObjectsApi(api)
        operator = cluster.start_process(
            [sys.executable, "-m", "kubeslim", "operator", "--namespace", NAMESPACE],
            env={"KUBESLIM_MAX_CONCURRENT": "1", "PYTHONUNBUFFERED": "1"},
            name="kubeslim-operator",
        )
        operator.wait_for_output("watching " + NAMESPACE, timeout=60)
        create(custom, "holder")  # takes the only slot and keeps it (its Pod never runs)
        time.sleep(5)
        idle, idle_by = request_rate(api, window)  # the control plane's own noise
        start = time.monotonic()
        for i in range(count):
            create(custom, f"wait-{i:04d}")

        def waiting() -> int:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
            return sum(
                1 for o in items["items"] if (o.get("status") or {}).get("state") == "Waiting"
            )

        while waiting() < count and time.monotonic() - start < 1800:
            time.sleep(10)
        settled_s = round(time.monotonic() - start, 1)
        loaded, loaded_by = request_rate(api, window)
        # Again after a pause: a rate that falls is the tail of the burst of creates,
        # not the cost of resources waiting.
        time.sleep(settle)
        later, later_by = request_rate(api, window)
        return {
            "waitingCount": waiting(),
            "allWaitingAfterSeconds": settled_s,
            "requestsPerSecondIdle": idle,
            "requestsPerSecondWhileWaiting": loaded,
            "requestsPerSecondForTheWaiting": round(loaded - idle, 2),
            "requestsPerSecondByKindIdle": idle_by,
            "requestsPerSecondByKindWhileWaiting": loaded_by,
            "secondsBeforeTheLaterWindow": settle,
            "requestsPerSecondLater": later,
            "requestsPerSecondForTheWaitingLater": round(later - idle, 2),
            "requestsPerSecondByKindLater": later_by,
            "windowSeconds": window,
            "operatorRssMiB": round(proc_kib(operator.pid, "VmRSS") / 1024, 1),
            "operatorLogTail": operator.tail(1500),
        }
    finally:
        rig.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument(
        "--waiting", type=int, default=0, help="instead: N resources waiting behind one slot"
    )
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument(
        "--settle", type=float, default=120.0, help="seconds between the two waiting windows"
    )
    parser.add_argument("--output", default="operator_scale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubeslim-scale-") as tmp:
        if args.waiting:
            result = {**header(), "settings": "KUBESLIM_MAX_CONCURRENT=1, kubelet stopped"}
            result.update(run_waiting(args.waiting, Path(tmp), args.window, args.settle))
        else:
            result = {**header(), "settings": "KUBESLIM_MAX_CONCURRENT=0, kubelet stopped"}
            result.update(run(args.count, Path(tmp)))
    # The machine is shared: the load at the end says what the run competed with.
    result["loadAverageAtEnd"] = [round(x, 2) for x in os.getloadavg()]
    save(args.output, result)
    for k, v in result.items():
        if k not in ("machine", "operatorLogTail"):
            print(k, v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
