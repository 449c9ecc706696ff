"""Scores of every run found under OUT, and the Markdown report with the paper's numbers beside ours.

OUT/<benchmark>/scores.json: {run: scores} for the runs whose answers are there (model, blind,
most_frequent, gguf-<file>), each as the benchmark's scorer returns them plus `missing_images`.
OUT/report.md: the paper's Table 4 (and the README's numbers where they differ) beside our runs, then
one table per benchmark with its headline keys per run, so the model always stands beside its baselines.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from mvlm_jax.atomic import atomic_file
from mvlm_jax.eval import benchmark, paper, records as records_io
from mvlm_jax.eval.runner import BLIND_RUN, MAJORITY_RUN, MODEL_RUN

RUN_ORDER = (MODEL_RUN, BLIND_RUN, MAJORITY_RUN)
RUN_LABELS = {MODEL_RUN: "model", BLIND_RUN: "blind (image withheld)", MAJORITY_RUN: "most frequent answer"}
SHOWN_MISSING = 10


def runs_in(directory: Path) -> dict[str, Path]:
    """run name -> answers file, the model's first, then the baselines, then GGUF runs."""
    found = {}
    for path in sorted(Path(directory).glob("answers*.jsonl")):
        found[MODEL_RUN if path.stem == "answers" else path.stem[len("answers_"):]] = path
    return dict(sorted(found.items(), key=lambda item: (RUN_ORDER.index(item[0]) if item[0] in RUN_ORDER
                                                       else len(RUN_ORDER), item[0])))


def score_run(name: str, answers: Path, data_root: Path, limit: int | None = None) -> dict:
    """Scores of one run. The runner answers questions in order, so a run with fewer answers than `limit`
    (a GGUF run over the first N, an unfinished one) is scored over the questions it covers."""
    records = records_io.read_records(answers)
    limit = len(records) if limit is None or len(records) < limit else limit
    scores = benchmark.module(name).score(records, Path(data_root), limit=limit)
    metadata = [r["metadata"] for r in records if isinstance(r.get("metadata"), dict)]
    missing = [m["image_missing"] for m in metadata if "image_missing" in m]
    tokens = sorted({m["max_new_tokens"] for m in metadata if "max_new_tokens" in m})
    return {**scores, "missing_images": len(missing), "missing_image_files": missing[:SHOWN_MISSING],
            "max_new_tokens": tokens[0] if len(tokens) == 1 else tokens or None}


def score_benchmark(name: str, data_root: Path, out: Path, limit: int | None = None) -> dict[str, dict]:
    """Score every run of OUT/<name>/ and write OUT/<name>/scores.json."""
    scores = {run: score_run(name, path, data_root, limit) for run, path in runs_in(Path(out) / name).items()}
    with atomic_file(Path(out) / name / "scores.json", force=True) as partial:
        partial.write_text(json.dumps(scores, indent=1) + "\n")
    return scores


def _value(scores: dict, key: str) -> float | None:
    value = scores
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) else None


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table4(all_scores: dict[str, dict[str, dict]]) -> list[str]:
    """The paper's Table 4 rows, then one row per run of ours (columns we did not run: "-")."""
    columns = list(paper.TABLE4_COLUMNS)
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for model, row in paper.TABLE4.items():
        readme = paper.README_ZOO.get(model, {})
        cells = [f"{row[c]:.1f}" + (f" (README {readme[c]:.1f})" if c in readme else "") for c in columns]
        lines.append(f"| {model} (paper) | " + " | ".join(cells) + " |")
    runs = list(dict.fromkeys(run for scores in all_scores.values() for run in scores))
    for run in runs:
        cells = []
        for column in columns:
            name, key = paper.TABLE4_COLUMNS[column]
            cells.append(_cell(_value(all_scores.get(name, {}).get(run, {}), key)))
        lines.append(f"| **ours: {RUN_LABELS.get(run, run)}** | " + " | ".join(cells) + " |")
    return lines


def benchmark_table(name: str, scores: dict[str, dict]) -> list[str]:
    keys = list(benchmark.module(name).SCORE_KEYS)
    lines = [f"### {name}", "", "| run | questions | " + " | ".join(keys) + " | answers missing | images missing |",
             "|---" * (len(keys) + 4) + "|"]
    official = benchmark.module(name).MAX_NEW_TOKENS
    for run, values in scores.items():
        label = RUN_LABELS.get(run, run)
        if values.get("max_new_tokens") not in (None, official):
            label += f" (max_new_tokens {values['max_new_tokens']}, not the official {official})"
        lines.append(f"| {label} | {values.get('questions', '-')} | "
                     + " | ".join(_cell(_value(values, k)) for k in keys)
                     + f" | {values.get('missing', 0)} | {values.get('missing_images', 0)} |")
    missing = {f for values in scores.values() for f in values.get("missing_image_files", [])}
    if missing:
        lines += ["", f"Images not found (first {SHOWN_MISSING}; their questions got an empty answer): "
                  + ", ".join(f"`{m}`" for m in sorted(missing))]
    return lines + [""]


def write_report(out: Path, names: Sequence[str], all_scores: dict[str, dict[str, dict]]) -> str:
    """OUT/report.md; returns its text."""
    lines = ["# Image benchmarks", "",
             "Percent, except MME (sums of per-subtask scores; perception max 2000). POPE: mean F1 of the "
             "three splits. Baselines: the same model with the image withheld, and (closed answer sets) the "
             "most frequent gold answer of each question type.", ""]
    if set(names) & set(benchmark.PAPER_BENCHMARKS):
        lines += ["## Beside the paper (MobileVLM, arXiv 2312.16886, Table 4)", ""] + table4(all_scores) + [""]
    lines += ["## Per benchmark", ""]
    for name in names:
        if all_scores.get(name):
            lines += benchmark_table(name, all_scores[name])
    text = "\n".join(lines)
    with atomic_file(Path(out) / "report.md", force=True) as partial:
        partial.write_text(text)
    return text
