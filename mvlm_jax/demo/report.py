"""The demo's summary: a markdown table per part and the loss curves of every training stage."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from mvlm_jax.atomic import atomic_file


def _metrics(stage_dir: Path) -> list[dict]:
    path = stage_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row  # a resumed run rewrites the steps after its checkpoint: keep the last
    return [rows[step] for step in sorted(rows)]


def plot_losses(workdir: Path, stages: Sequence[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3.2), squeeze=False)
    for axis, stage in zip(axes[0], stages):
        rows = _metrics(workdir / stage)
        axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], linewidth=1)
        axis.set_title(stage)
        axis.set_xlabel("step")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (per target token; vision: per class)")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def write(workdir: Path, stages: Sequence[str], scores: dict[str, dict], agreement: dict, seconds: dict,
          total_seconds: float) -> str:
    """Write summary.md and loss_curves.png; returns the markdown. scores: run -> demo_world scores."""
    lines = ["# MobileVLM demo", "", "## Training", "", "| stage | steps | first loss | last loss | speed | time now |",
             "|---|---|---|---|---|---|"]
    for stage in stages:
        rows = _metrics(workdir / stage)
        if rows:
            last = rows[-10:]
            tokens = sum(r["tokens_per_s"] for r in last) / len(last)  # a classifier stage has images only
            speed = f"{tokens:,.0f} tokens/s" if tokens else f"{sum(r['images_per_s'] for r in last) / len(last):,.0f} images/s"
            lines.append(f"| {stage} | {rows[-1]['step']} | {rows[0]['loss']:.3f} | {rows[-1]['loss']:.3f} | "
                         f"{speed} | {seconds.get(stage, 0):.0f} s{' (reused)' if not seconds.get(stage) else ''} |")
    model, blind, majority = scores["model"], scores["blind"], scores["most_frequent"]
    lines += ["", f"## Held-out image questions (JAX, greedy, {model['questions']} questions)", "",
              "Beside two baselines: the same model with the image withheld, and the most frequent training "
              "answer of each question type.", "",
              "| question type | model | image withheld | most frequent answer |", "|---|---|---|---|"]
    for kind, value in model["per_type"].items():
        lines.append(f"| {kind} | {value:.1f}% | {blind['per_type'][kind]:.1f}% | {majority['per_type'][kind]:.1f}% |")
    lines += [f"| **all** | **{model['accuracy']:.1f}%** | {blind['accuracy']:.1f}% | {majority['accuracy']:.1f}% |",
              "", "## llama.cpp (GGUF: LLM + mmproj), same prompts and images", "",
              "| LLM type | questions | same answer as JAX | same tokens | same tokens as JAX on the file's weights "
              "| accuracy (llama.cpp) | accuracy (JAX) |",
              "|---|---|---|---|---|---|---|"]
    for file_type, a in agreement.items():
        lines.append(f"| {file_type} | {a['questions']} | {a['same_answers']} | {a['same_tokens']} | "
                     f"{a.get('same_tokens_stored_weights', '')} | {a['accuracy']:.1f}% | {a['jax_accuracy']:.1f}% |")
    lines += ["", "## Time", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {value:.0f} |" for name, value in seconds.items()]
    lines += [f"| total | {total_seconds:.0f} |", "", "![loss curves](loss_curves.png)", ""]
    text = "\n".join(lines)
    with atomic_file(workdir / "summary.md", force=True) as partial:
        partial.write_text(text)
    plot_losses(workdir, stages, workdir / "loss_curves.png")
    return text
