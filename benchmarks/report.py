"""Markdown tables from benchmarks/results/*.json (pasted into RESULTS.md).

.venv/bin/python -m benchmarks.report [NAME ...]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from benchmarks.common import RESULTS


def provenance(r: dict[str, Any]) -> str:
    m = r["machine"]
    return (
        f"`{r['command']}` — {r['date']} — {m['cpuModel']}, {m['cpus']} CPUs, "
        f"bf16 {'yes' if m['bf16'] else 'no'}, VNNI {'yes' if m['vnni'] else 'no'}, "
        f"GPU {m['gpu'] or 'none'}, load average {m['loadAverage1m']} at start, "
        f"torch {m['torch']}, OpenVINO {m['openvino'].split('-')[0]}"
    )


def speed(r: dict[str, Any]) -> str:
    lines = [
        provenance(r),
        "",
        "| model | variant | precision hint (runs as) | FLOPs cut | IR MB | IR vs FP16 IR "
        "| latency ms | latency x (vs FP32 default) | FPS | FPS x (vs FP32 default) "
        "| FPS x (vs FP32 f32) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in r["models"]:
        for x in m["rows"]:
            lines.append(
                f"| {m['arch']} | {x['name']} | {x['precisionHint']} ({x['inferencePrecision']}) "
                f"| {x.get('flopsReduction', 0):.0%} | {x['irBytes'] / 1e6:.1f} "
                f"| {x['irSizeVsFp16']:.2f}x | {x['latencyMsP50']:.2f} "
                f"| {x['latencySpeedupVsFp32Default']:.2f}x | {x['throughputFps']:.0f} "
                f"| {x['throughputVsFp32Default']:.2f}x | {x['throughputVsFp32F32']:.2f}x |"
            )
    return "\n".join(lines)


def quality(r: dict[str, Any]) -> str:
    lines = [provenance(r), ""]
    for m in r["models"]:
        b = m["budget"]
        lines += [
            f"**{m['model']}** — budget `{b['name']}`: baseline `{m['trainCommand']}` "
            f"({m['trainSeconds']:.0f} s), trainLimit {b['trainLimit'] or '60k (all)'}, "
            f"fine-tune {b['fineTune']} epochs x {b.get('maxSteps') or 'all'} batches of 128",
            "",
            "| config | acc. baseline | acc. INT8 result | drop (points) | FLOPs cut | params cut "
            "| IR vs FP16 IR | FPS x (vs FP32 default) | FPS x (vs FP32 f32) | latency x "
            "| prune stage s | run s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for h in m["headline"]:

            def f(key: str, fmt: Callable[[Any], str], row: dict[str, Any] = h) -> str:
                return fmt(row[key]) if row.get(key) is not None else "-"

            lines.append(
                f"| {h['config']} | {f('accuracyBaseline', lambda v: f'{v:.2%}')} "
                f"| {f('accuracyOptimized', lambda v: f'{v:.2%}')} "
                f"| {f('accuracyDropPoints', lambda v: f'{v:.2f}')} "
                f"| {f('flopsReduction', lambda v: f'{v:.1%}')} "
                f"| {f('paramsReduction', lambda v: f'{v:.1%}')} "
                f"| {f('irSizeVsFp16', lambda v: f'{v:.2f}x')} "
                f"| {f('throughputVsFp32Default', lambda v: f'{v:.2f}x')} "
                f"| {f('throughputVsFp32F32', lambda v: f'{v:.2f}x')} "
                f"| {f('latencySpeedupVsFp32Default', lambda v: f'{v:.2f}x')} "
                f"| {f('pruneSeconds', lambda v: f'{v:.0f}')} "
                f"| {f('wallSeconds', lambda v: f'{v:.0f}')} |"
            )
        lines.append("")
    return "\n".join(lines)


def generic(r: dict[str, Any]) -> str:
    body = {
        k: v for k, v in r.items() if k not in ("command", "date", "machine", "operatorLogTail")
    }
    return provenance(r) + "\n\n```json\n" + json.dumps(body, indent=1)[:6000] + "\n```"


RENDER = {"speed_imagenet": speed, "quality_fashion_mnist": quality}


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in RESULTS.glob("*.json"))
    for name in names:
        r = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"### {name}\n")
        print(RENDER.get(name, generic)(r))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
