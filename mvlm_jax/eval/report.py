"""Scores of every run found under OUT, and the Markdown report with the paper's numbers beside ours.

OUT/<benchmark>/scores.json: {run: scores} for the runs whose answers are there (model, blind,
most_frequent, gguf-<file>), each as the benchmark's scorer returns them plus `model_id`,
`max_new_tokens` and the questions whose image could not be used (`image_errors`).
OUT/report.md: the paper's Table 4 (and the README's numbers where they differ) beside our runs, then
one table per benchmark with its headline keys per run, so the model always stands beside its baselines.
It covers every benchmark scored in OUT, by this command or an earlier one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from mvlm_jax.atomic import atomic_file
from mvlm_jax.eval import benchmark, paper, records as records_io
from mvlm_jax.eval.benchmark import AnswerError
from mvlm_jax.eval.runner import BLIND_RUN, MAJORITY_RUN, MODEL_RUN

RUN_ORDER = (MODEL_RUN, BLIND_RUN, MAJORITY_RUN)
RUN_LABELS = {MODEL_RUN: "model", BLIND_RUN: "blind (image withheld)", MAJORITY_RUN: "most frequent answer"}
SHOWN_ERRORS = 10


def runs_in(directory: Path) -> dict[str, Path]:
    """run name -> answers file, the model's first, then the baselines, then GGUF runs."""
    found = {}
    for path in sorted(Path(directory).glob("answers*.jsonl")):
        found[MODEL_RUN if path.stem == "answers" else path.stem[len("answers_"):]] = path
    return dict(sorted(found.items(), key=lambda item: (RUN_ORDER.index(item[0]) if item[0] in RUN_ORDER
                                                       else len(RUN_ORDER), item[0])))


def score_run(name: str, answers: Path, data_root: Path, limit: int | None = None) -> dict:
    """Scores of one run over the first `limit` questions. The runner answers questions in order, so a run
    with fewer answers (a GGUF run over the first N, an unfinished one) is scored over those it covers, and
    one with more (an earlier run without --limit) over the first `limit`."""
    module = benchmark.module(name)
    records = records_io.read_records(answers)
    if limit is not None and len(records) > limit:
        wanted = {q.key for q in module.questions(Path(data_root))[:limit]}
        records = [r for r in records if (str(r["question_id"]), r["prompt"]) in wanted]
    try:
        scores = module.score(records, Path(data_root), limit=min(len(records), limit or len(records)))
    except AnswerError as error:
        raise AnswerError(f"{answers}: {error}") from None
    metadata = [r["metadata"] for r in records if isinstance(r.get("metadata"), dict)]
    errors = [m["image_error"] for m in metadata if "image_error" in m]
    tokens = sorted({m["max_new_tokens"] for m in metadata if "max_new_tokens" in m})
    return {**scores, "model_id": records[0]["model_id"] if records else None, "image_errors": len(errors),
            "image_error_messages": errors[:SHOWN_ERRORS],
            "max_new_tokens": tokens[0] if len(tokens) == 1 else tokens or None}


def score_benchmark(name: str, data_root: Path, out: Path, limit: int | None = None) -> dict[str, dict]:
    """Score every run of OUT/<name>/ and write OUT/<name>/scores.json."""
    scores = {run: score_run(name, path, data_root, limit) for run, path in runs_in(Path(out) / name).items()}
    with atomic_file(Path(out) / name / "scores.json", force=True) as partial:
        partial.write_text(json.dumps(scores, indent=1) + "\n")
    return scores


def scored_benchmarks(out: Path) -> dict[str, dict[str, dict]]:
    """Every OUT/<benchmark>/scores.json, in the report's benchmark order."""
    return {name: json.loads((Path(out) / name / "scores.json").read_text()) for name in benchmark.BENCHMARKS
            if (Path(out) / name / "scores.json").is_file()}


def _value(scores: dict, key: str) -> float | None:
    value = scores
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) else None


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _label(run: str, model_ids: Sequence[str | None]) -> str:
    ids = sorted({i for i in model_ids if i and i != MAJORITY_RUN})
    label = RUN_LABELS.get(run, run)
    return f"{label}: {', '.join(ids)}" + (" (different models!)" if len(ids) > 1 else "") if ids else label


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
        label = _label(run, [scores.get(run, {}).get("model_id") for scores in all_scores.values()])
        lines.append(f"| **ours, {label}** | " + " | ".join(cells) + " |")
    return lines


def benchmark_table(name: str, scores: dict[str, dict]) -> list[str]:
    keys = list(benchmark.module(name).SCORE_KEYS)
    lines = [f"### {name}", "", "| run | questions | " + " | ".join(keys) + " | answers missing | images unusable |",
             "|---" * (len(keys) + 4) + "|"]
    official = benchmark.module(name).MAX_NEW_TOKENS
    for run, values in scores.items():
        label = _label(run, [values.get("model_id")])
        if values.get("max_new_tokens") not in (None, official):
            label += f" (max_new_tokens {values['max_new_tokens']}, not the official {official})"
        lines.append(f"| {label} | {values.get('questions', '-')} | "
                     + " | ".join(_cell(_value(values, k)) for k in keys)
                     + f" | {values.get('missing', 0)} | {values.get('image_errors', 0)} |")
    errors = sorted({e for values in scores.values() for e in values.get("image_error_messages", [])})
    if errors:
        lines += ["", f"Images that could not be used (first {SHOWN_ERRORS} per run; their questions got an empty "
                  "answer):", ""] + [f"- {e}" for e in errors]
    return lines + [""]


def write_report(out: Path) -> str:
    """OUT/report.md from every benchmark scored in OUT; returns its text."""
    all_scores = scored_benchmarks(out)
    lines = ["# Image benchmarks", "",
             "Percent, except MME (sums of per-subtask scores; perception max 2000). POPE: mean F1 of the "
             "three splits. Baselines: the same model with the image withheld, and (closed answer sets) the "
             "most frequent gold answer of each question type.", ""]
    if set(all_scores) & set(benchmark.PAPER_BENCHMARKS):
        lines += ["## Beside the paper (MobileVLM, arXiv 2312.16886, Table 4)", ""] + table4(all_scores) + [""]
    lines += ["## Per benchmark", ""]
    for name, scores in all_scores.items():
        lines += benchmark_table(name, scores)
    text = "\n".join(lines)
    with atomic_file(Path(out) / "report.md", force=True) as partial:
        partial.write_text(text)
    return text
