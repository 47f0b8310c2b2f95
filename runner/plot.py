"""A picture of what jobs cost over time: cumulative dollars per job, with its preemptions and
relaunches marked, beside what the same machine hours would have cost on-demand.

matplotlib is imported here only, and this module only by ``cost --plot`` and ``simulate --plot``."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import state as st


@dataclass(frozen=True)
class Curve:
    """One job's cumulative cost: points (hours since its first launch, dollars so far)."""

    job_id: str
    spot: list[tuple[float, float]]
    on_demand: list[tuple[float, float]]
    preemptions: list[tuple[float, float]]  # where the cost line stands when a machine was taken away
    lost: list[str]  # per preemption: the work it threw away, in words
    relaunches: list[tuple[float, float]]
    started: float  # unix seconds of the first launch


def curve(state: st.State, job: st.JobRow, now: float | None = None) -> Curve | None:
    """Cost accrues linearly through each billing segment at its own effective rate and stays flat
    between segments (nothing is billed while the runner waits for the next machine)."""
    now = now or time.time()
    segments = state.segments(job.id)
    if not segments:
        return None
    from runner.cost import lost_work

    t0 = segments[0].started
    attempts = {a.id: a for a in state.attempts(job.id)}
    spot, od, pre, rel, lost = [(0.0, 0.0)], [(0.0, 0.0)], [], [], []
    usd = od_usd = 0.0
    for i, seg in enumerate(segments):
        start, end = (seg.started - t0) / 3600, ((seg.ended or now) - t0) / 3600
        spot.append((start, usd))
        od.append((start, od_usd))
        if i:
            rel.append((start, usd))
        usd += seg.total_cost(now)
        od_usd += seg.hours(now) * seg.on_demand_rate_per_hour + seg.storage_cost(now)
        spot.append((end, usd))
        od.append((end, od_usd))
        if seg.end_reason == "interrupted":
            pre.append((end, usd))
            steps, _hours, dollars = lost_work(attempts[seg.attempt_id], seg, None, now) if seg.attempt_id in attempts \
                else (0, 0.0, 0.0)
            lost.append(f"{steps:,} steps lost (${dollars:.2f})" if steps else "")
    return Curve(job.id, spot, od, pre, lost=lost, relaunches=rel, started=t0)


def _money(x: float, _pos: object = None) -> str:
    return f"${x:,.2f}" if x < 100 else f"${x:,.0f}"


def plot_costs(curves: list[Curve], path: str | Path, title: str = "What each job cost over time") -> Path:
    """Write the chart as a PNG (or any format matplotlib knows from the file's suffix)."""
    return save_figure(cost_figure(curves, title), path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (its folder made if need be) and close it; the path written."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def cost_figure(curves: list[Curve], title: str = "What each job cost over time"):
    """The chart as a matplotlib figure (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must come before pyplot
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    colors = plt.get_cmap("tab10").colors
    span = max((c.spot[-1][0] for c in curves), default=1.0) or 1.0
    # The time axis in a unit that suits the span (matplotlib then picks round ticks in that unit).
    unit, k = ("seconds", 3600.0) if span < 3 / 60 else ("minutes", 60.0) if span < 3 else ("hours", 1.0)

    def scaled(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
        return [x * k for x, _y in points], [y for _x, y in points]

    for i, c in enumerate(curves):
        color = colors[i % len(colors)]
        xs, ys = scaled(c.spot)
        ax.plot(xs, ys, color=color, linewidth=2.2, label=f"{c.job_id}: billed ({_money(ys[-1])})")
        oxs, oys = scaled(c.on_demand)
        ax.plot(oxs, oys, color=color, linewidth=1.6, linestyle="--", alpha=0.8,
                label=f"{c.job_id}: same hours on-demand ({_money(oys[-1])})")
        if c.preemptions:
            px, py = scaled(c.preemptions)
            ax.scatter(px, py, marker="X", s=90, color="#d62728", edgecolor="black", linewidth=0.6, zorder=5)
            for x, y, text in zip(px, py, c.lost, strict=True):
                if text:
                    ax.annotate(text, (x, y), xytext=(8, -16), textcoords="offset points", fontsize=8, color="#d62728",
                                ha="left")  # below the line: the on-demand line runs above it
        if c.relaunches:
            rx, ry = scaled(c.relaunches)
            ax.scatter(rx, ry, marker="^", s=70, color="#2ca02c", edgecolor="black", linewidth=0.6, zorder=5)
        # The final figures at the line ends, so the difference reads without the legend.
        ax.annotate(_money(ys[-1]), (xs[-1], ys[-1]), xytext=(6, -4), textcoords="offset points", color=color,
                    fontsize=9, fontweight="bold")
        ax.annotate(_money(oys[-1]), (oxs[-1], oys[-1]), xytext=(6, 2), textcoords="offset points", color=color,
                    fontsize=9)
    ax.set_xlabel(f"time since the job's first launch ({unit})")
    ax.set_ylabel("cumulative cost (USD)")
    ax.yaxis.set_major_formatter(FuncFormatter(_money))
    ax.set_xlim(left=0, right=span * k * 1.12)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker="X", color="#d62728", markeredgecolor="black", linestyle="", markersize=9),
                Line2D([], [], marker="^", color="#2ca02c", markeredgecolor="black", linestyle="", markersize=8)]
    labels += ["preemption (machine taken away)", "relaunch (resumes from the last checkpoint)"]
    ax.legend(handles, labels, loc="upper left", fontsize=9, framealpha=0.9)
    fig.tight_layout()
    return fig


def plot_simulation(results: list, path: str | Path, title: str) -> Path:
    """The simulated cost of each strategy: the distribution over trials, with its mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=120)
    colors = ["#1f77b4", "#ff7f0e", "#7f7f7f"]
    values = [v for r in results for v in r.samples_usd]
    lo, hi = min(values), max(values)
    bins = max(10, min(80, int(math.sqrt(len(values)))))
    width = (hi - lo) / bins or 0.05
    for r, color in zip(results, colors, strict=False):
        if r.trials > 1 and max(r.samples_usd) - min(r.samples_usd) > width:
            ax.hist(r.samples_usd, bins=[lo + i * width for i in range(bins + 2)], alpha=0.45, color=color,
                    label=f"{r.strategy.name}: mean {_money(r.usd.mean)}")
        else:
            ax.axvline(r.usd.mean, color=color, linewidth=2.5, label=f"{r.strategy.name}: {_money(r.usd.mean)}")
        ax.axvline(r.usd.mean, color=color, linewidth=1.5, linestyle="--")
    ax.set_xlabel("cost of the whole job (USD)")
    ax.set_ylabel("trials")
    ax.xaxis.set_major_formatter(FuncFormatter(_money))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
