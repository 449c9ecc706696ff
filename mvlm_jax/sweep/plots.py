"""The report's figures (PNG): loss curves per stage overlaid across trials, accuracy against edge latency
with the Pareto front, accuracy against visual tokens."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl rows by step (a resumed run rewrites the steps after its checkpoint: the last wins)."""
    path = run_dir / "metrics.jsonl"
    rows: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["step"]] = row
    return [rows[step] for step in sorted(rows)]


def loss_curves(curves: dict[str, dict[str, list[dict]]], out: Path) -> None:
    """curves: stage name -> {label: metrics rows}; one panel per stage."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, max(len(curves), 1), figsize=(4.2 * max(len(curves), 1), 3.4), squeeze=False)
    for axis, (stage, lines) in zip(axes[0], curves.items()):
        for label, rows in lines.items():
            axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], linewidth=1, label=label)
        axis.set_title(stage)
        axis.set_xlabel("step")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6)
    axes[0][0].set_ylabel("training loss (per target token)")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower x (latency) and higher y (accuracy), one strictly."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((a <= x and b >= y) and (a < x or b > y) for j, (a, b) in enumerate(points) if j != i):
            front.append(i)
    return front


def scatter(rows: Sequence[dict[str, Any]], x_key: str, y_key: str, x_label: str, y_label: str, out: Path,
            front: bool = False) -> None:
    """One point per row with both values; the Pareto front joined and ringed when `front`."""
    plt = _pyplot()
    points = [(r[x_key], r[y_key], r["trial"]) for r in rows if r.get(x_key) is not None and r.get(y_key) is not None]
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for x, y, name in points:
        axis.scatter([x], [y], s=25)
        axis.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if front and points:
        best = sorted((points[i] for i in pareto_front([(x, y) for x, y, _ in points])), key=lambda p: p[0])
        axis.plot([p[0] for p in best], [p[1] for p in best], "k--", linewidth=0.8, label="Pareto front")
        axis.scatter([p[0] for p in best], [p[1] for p in best], s=90, facecolors="none", edgecolors="k")
        axis.legend(fontsize=7)
    if not points:
        axis.text(0.5, 0.5, "no finished trials yet", ha="center", va="center", transform=axis.transAxes)
    axis.set_xlabel(x_label)
    axis.set_ylabel(y_label)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
