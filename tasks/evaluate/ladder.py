"""The ladder's comparison: a table and a chart of metric against estimated cost per rung."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.spec import LOWER_IS_BETTER

#: Where rungs with (almost) no training cost sit on the chart's log-scaled cost axis.
MIN_CHART_HOURS = 1e-6


def best_rung(rungs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The rung with the best ``metric``; among equals, the cheapest (the earliest tried)."""
    sign = -1 if metric in LOWER_IS_BETTER else 1
    return max(enumerate(rungs), key=lambda item: (sign * item[1]["metrics"][metric], -item[0]))[1]


def ladder_table(rungs: list[dict[str, Any]], metric: str, target: float | None) -> str:
    """The comparison as Markdown, one row per rung tried, in the order tried."""
    lines = [
        f"| rung | method | {metric} | meets target{'' if target is None else f' ({target})'} "
        "| est. train hours | measured train s | trainable params | MLflow run |",
        "|--:|---|--:|:-:|--:|--:|--:|---|",
    ]
    for i, rung in enumerate(rungs, start=1):
        hours = rung["estimate"].get("train_gpu_hours")
        lines.append(
            f"| {i} | {rung['method']} | {rung['metrics'][metric]:.4f} | "
            f"{'yes' if rung['met_target'] else 'no'} | "
            f"{'?' if hours is None else f'{hours:.3g}'} ({rung['estimate']['hardware']}) | "
            f"{rung['train_seconds']:.1f} | {rung['trainable_params']:,} | "
            f"`{rung['mlflow_run_id']}` |"
        )
    return "\n".join(lines) + "\n"


def ladder_chart(
    rungs: list[dict[str, Any]], metric: str, target: float | None, path: Path
) -> Path:
    """Draw metric against estimated training cost (log scale), with the target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [max(MIN_CHART_HOURS, r["estimate"].get("train_gpu_hours") or 0) for r in rungs]
    ys = [r["metrics"][metric] for r in rungs]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(xs, ys, "-o", color="tab:blue")
    for x, y, rung in zip(xs, ys, rungs, strict=True):
        ax.annotate(rung["method"], (x, y), textcoords="offset points", xytext=(6, 6))
    if target is not None:
        ax.axhline(target, color="tab:red", linestyle="--", label=f"target {target}")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    hardware = rungs[0]["estimate"]["hardware"] if rungs else "?"
    ax.set_xlabel(f"estimated training cost (hours on {hardware}, log scale)")
    ax.set_ylabel(metric)
    ax.set_title("escalation ladder: cheapest first")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ladder_report(
    rungs: list[dict[str, Any]], metric: str, target: float | None, out_dir: Path
) -> dict[str, str]:
    """Write ``ladder.md`` and ``ladder.png`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "ladder.md"
    table.write_text(ladder_table(rungs, metric, target))
    chart = ladder_chart(rungs, metric, target, out_dir / "ladder.png")
    return {"table": str(table), "chart": str(chart)}


ladder_report_task = task(name="ladder_report", cache_policy=NO_CACHE)(ladder_report)
