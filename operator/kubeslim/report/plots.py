"""The report's figures as inline SVG (matplotlib, text kept as text): no files, no network."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "kubeslim"})
CHOSEN, OTHER, FRONT, BUDGET = "#1b7f3b", "#4062bb", "#e07a1f", "#c62828"


def svg(fig: Figure) -> str:
    """The figure as an <svg> element (the XML prolog dropped so it can sit in HTML)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (speedup, drop) points no other point beats on both (higher speedup, lower
    drop), sorted by speedup."""
    front = [p for p in points if not any(q != p and q[0] >= p[0] and q[1] <= p[1] for q in points)]
    return sorted(set(front))


def tradeoff(rows: list[dict[str, Any]], budget_points: float, chosen: str | None) -> str:
    """Accuracy drop against speedup for every measured candidate, the Pareto front and
    the budget line."""
    measured = [r for r in rows if r.get("speedup") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in measured:
        color = CHOSEN if r["name"] == chosen else OTHER
        ax.scatter(r["speedup"], r["accuracyDrop"], s=60 if r["name"] == chosen else 30,
                   color=color, zorder=3)  # fmt: skip
        ax.annotate(f"{r['name']} ({r['target']:g})", (r["speedup"], r["accuracyDrop"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)  # fmt: skip
    front = pareto_front([(r["speedup"], r["accuracyDrop"]) for r in measured])
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=FRONT,
                label="Pareto front", zorder=2)  # fmt: skip
    ax.axhline(budget_points, color=BUDGET, linestyle="--", label=f"budget {budget_points:g} pt")
    ax.axvline(1.0, color="#999999", linewidth=0.8)
    ax.set_xlabel("speedup over the original (objective's measure)")
    ax.set_ylabel("accuracy drop after INT8 (points, tuning split)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return svg(fig)


def kept_channels(rows: list[dict[str, Any]]) -> str:
    """Kept output channels per pruned layer for each candidate, against the original."""
    with_layers = [r for r in rows if r.get("layers")]
    if not with_layers:
        return ""
    layers = [entry["layer"] for entry in with_layers[0]["layers"]]
    totals = [entry["total"] for entry in with_layers[0]["layers"]]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(layers)), 3.8))
    xs = list(range(len(layers)))
    ax.bar(xs, totals, color="#dddddd", label="original", width=0.8)
    width = 0.8 / len(with_layers)
    for i, r in enumerate(with_layers):
        kept = {entry["layer"]: entry["kept"] for entry in r["layers"]}
        offsets = [x - 0.4 + width * (i + 0.5) for x in xs]
        ax.bar(offsets, [kept.get(name, 0) for name in layers], width=width,
               label=f"{r['name']} ({r['target']:g})")  # fmt: skip
    ax.set_xticks(xs, layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("output channels")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return svg(fig)


def latencies(baseline: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Batch-1 latency p50 of every measurement round, per model (box and points)."""
    models = [("original", baseline)] + [(r["name"], r) for r in rows if r.get("rounds")]
    series = [(name, (m.get("rounds") or {}).get("latency") or []) for name, m in models]
    series = [(name, values) for name, values in series if values]
    if not series:
        return ""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.boxplot([v for _, v in series], tick_labels=[n for n, _ in series], orientation="horizontal")
    for i, (_, values) in enumerate(series, start=1):
        ax.scatter(values, [i] * len(values), s=12, color=OTHER, zorder=3)
    ax.set_xlabel("latency p50 per round (ms, batch 1)")
    ax.grid(axis="x", alpha=0.3)
    return svg(fig)
