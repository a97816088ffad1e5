"""The search report as one self-contained HTML page: tables, inline SVG plots, the exact
spec and versions. Rendered from the select stage's metrics and details; no I/O."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from kubeslim.report.plots import kept_channels, latencies, tradeoff

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem}th,td{padding:0.25rem 0.6rem;
border-bottom:1px solid #ddd;text-align:right}th:first-child,td:first-child{text-align:left}
tr.chosen{background:#e8f5e9;font-weight:600}tr.out{color:#888}
pre{background:#f6f6f6;padding:0.8rem;overflow-x:auto;font-size:0.8rem}
.figure svg{max-width:100%;height:auto}.outcome{font-size:1.1rem;padding:0.6rem;
background:#f1f4fb;border-left:4px solid #4062bb}
"""


def render(body: dict[str, Any]) -> str:
    """The whole page from {"metrics": ..., "details": ...} of a select result."""
    metrics, details = body.get("metrics", {}), body.get("details", {})
    rows: list[dict[str, Any]] = details.get("candidates", [])
    base: dict[str, Any] = details.get("baseline", {})
    chosen = metrics.get("chosen")
    budget = float(metrics.get("maxAccuracyDrop", 0.0)) * 100
    sections = [
        "<h1>kubeslim search report</h1>",
        f'<p class="outcome">{escape(str(metrics.get("message", "")))}</p>',
        "<h2>Before and after</h2>",
        _before_after(base, rows, chosen or metrics.get("closest")),
        "<h2>Every candidate</h2>",
        _candidates(rows, chosen),
        "<h2>Accuracy against speedup</h2>",
        _figure(tradeoff(rows, budget, chosen)),
        "<h2>Kept channels per layer</h2>",
        _figure(kept_channels(rows)),
        "<h2>Latency distributions</h2>",
        _figure(latencies(base, rows)),
        "<h2>Spec</h2>",
        f"<pre>{escape(json.dumps(details.get('spec', {}), indent=2, sort_keys=True))}</pre>",
        "<h2>Versions</h2>",
        _table(["package", "version"], [[k, v] for k, v in details.get("versions", {}).items()]),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>kubeslim search report</title><style>{STYLE}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


def _figure(svg: str) -> str:
    return f'<div class="figure">{svg}</div>' if svg else "<p>(no data)</p>"


def _before_after(base: dict[str, Any], rows: list[dict[str, Any]], pick: str | None) -> str:
    after = next((r for r in rows if r["name"] == pick), None)
    header = ["model", "accuracy (tuning)", "accuracy (test)", "latency p50", "throughput",
              "size", "GFLOPs", "params"]  # fmt: skip
    body = [_model_cells("original", base, base.get("tuningAccuracy", base.get("accuracy")))]
    if after is not None:
        body.append(_model_cells(f"{after['name']} (INT8)", after, after.get("accuracyAfterInt8")))
    return _table(header, body)


def _model_cells(label: str, m: dict[str, Any], tuning: Any) -> list[str]:
    return [
        label,
        _pct(tuning),
        _pct(m.get("accuracy")),
        _num(m.get("latencyMsP50"), "{:.3f} ms"),
        _num(m.get("throughputFps"), "{:,.0f} img/s"),
        _num(m.get("sizeBytes") and m["sizeBytes"] / 1e6, "{:.2f} MB"),
        _num(m.get("flops") and m["flops"] / 1e9, "{:.4f}"),
        _num(m.get("params") and m["params"] / 1e6, "{:.3f} M"),
    ]


def _candidates(rows: list[dict[str, Any]], chosen: str | None) -> str:
    header = ["candidate", "target", "round", "state", "FLOPs cut", "acc. before INT8",
              "acc. after INT8", "drop (pt)", "speedup", "size", "in budget"]  # fmt: skip
    body, classes = [], []
    for r in rows:
        body.append([
            r["name"], f"{r['target']:g}", str(r.get("round", 0)), str(r.get("state", "")),
            _num(r.get("flopsReduction") and r["flopsReduction"] * 100, "{:.1f}%"),
            _pct(r.get("accuracyBeforeInt8")), _pct(r.get("accuracyAfterInt8")),
            _num(r.get("accuracyDrop"), "{:.2f}"), _num(r.get("speedup"), "{:.2f}x"),
            _num(r.get("sizeBytes") and r["sizeBytes"] / 1e6, "{:.2f} MB"),
            _yes_no(r.get("withinBudget")),
        ])  # fmt: skip
        classes.append("chosen" if r["name"] == chosen else "" if r.get("withinBudget") else "out")
    return _table(header, body, classes)


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    lines = []
    for i, row in enumerate(rows):
        cls = classes[i] if classes and classes[i] else ""
        attr = f' class="{cls}"' if cls else ""
        lines.append(f"<tr{attr}>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _yes_no(value: Any) -> str:
    return "-" if value is None else "yes" if value else "no"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 100:.2f}%"


def _num(value: Any, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
