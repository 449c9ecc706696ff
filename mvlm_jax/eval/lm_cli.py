"""`mvlm eval lm`: the paper's language benchmarks (Table 3) through lm-evaluation-harness 0.4.13.

    mvlm eval lm --ckpt CKPT --tasks paper --data-root DATA --out OUT [--limit N] [--batch-size N]
    mvlm eval lm --data-root DATA --tasks paper --write-tasks TASK_DIR     (task YAMLs for `lm_eval`)
    mvlm eval lm harness --model mvlm_jax --model_args ckpt=CKPT --tasks arc_easy --include_path TASK_DIR ...
        (lm-eval's own command line, any of its arguments, with the `mvlm_jax` model registered)

Zero-shot tasks run in one lm_eval.simple_evaluate call, MMLU in a second one with num_fewshot=5 (lm-eval
applies one num_fewshot to a whole call). Writes OUT/lm/results.json (lm-eval's results dicts of both calls,
merged per task; each call's run settings under "runs") and OUT/lm/report.md (the paper's Table 3 rows beside
ours), and prints the table. The data-root layout is in mvlm_jax/eval/lm_tasks.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from mvlm_jax.eval.lm_tasks import KNOWN, MMLU, MMLU_FEWSHOT, LMDataError, check_data, parse_tasks, write_task_dir
from mvlm_jax.eval.paper import TABLE3, TABLE3_COLUMNS

# lm-eval result keys that hold one entry per task or group (merged over the two calls)
PER_TASK_KEYS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                 "n-samples")
FOUR_PLACES = {"MMLU", "Avg."}  # the paper prints these with 4 decimals, the rest with 2


def merge_results(runs: dict[str, dict]) -> dict:
    """lm-eval results dicts of several simple_evaluate calls -> one: per-task keys merged, everything
    else (config, seeds, versions, dates) per call under "runs"."""
    merged: dict = {key: {} for key in PER_TASK_KEYS}
    merged["runs"] = {}
    for label, result in runs.items():
        for key in PER_TASK_KEYS:
            merged[key].update(result.get(key) or {})
        merged["runs"][label] = {k: v for k, v in result.items() if k not in PER_TASK_KEYS and k != "samples"}
    return merged


def table_values(results: dict) -> dict[str, float | None]:
    """Table-3 column -> our value (None where the task did not run)."""
    values = {}
    for column, (task, metric) in TABLE3_COLUMNS.items():
        value = (results.get("results", {}).get(task) or {}).get(metric)
        values[column] = None if value is None else float(value)
    return values


def paper_average(values: Sequence[float | None]) -> float | None:
    """The paper's Avg.: the unweighted mean of the ten columns; None unless all ten are there."""
    if len(values) != len(TABLE3_COLUMNS) or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _cell(column: str, value: float | None, paper: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if not paper or column in FOUR_PLACES else f"{value:.2f}"


def render_table(ours: dict[str, float | None], label: str) -> str:
    """Markdown table: the paper's Table-3 rows, then ours; "-" where a column did not run."""
    columns = [*TABLE3_COLUMNS, "Avg."]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for model, row in TABLE3.items():
        cells = dict(zip(TABLE3_COLUMNS, row), **{"Avg.": paper_average(row)})
        lines.append(f"| {model} (paper) | " + " | ".join(_cell(c, cells[c], True) for c in columns) + " |")
    cells = {**ours, "Avg.": paper_average(list(ours.values()))}
    lines.append(f"| {label} | " + " | ".join(_cell(c, cells[c], False) for c in columns) + " |")
    return "\n".join(lines)


def render_report(ours: dict[str, float | None], label: str, ckpt: str, limit: int | None) -> str:
    notes = [f"Checkpoint: `{ckpt}`. lm-evaluation-harness 0.4.13, metric `acc` (not `acc_norm`); TruthfulQA "
             f"mc1 / mc2; MMLU {MMLU_FEWSHOT}-shot (lm-eval's `mmlu` group, size-weighted over its 57 subjects); "
             "the rest zero-shot. Avg. is the unweighted mean of the ten columns, as in the paper (shown only "
             "when all ten ran)."]
    if limit is not None:
        notes.append(f"**--limit {limit}: only the first {limit} documents of each task (each MMLU subject); "
                     "not comparable with the paper.**")
    return "# Language benchmarks (MobileVLM paper, Table 3)\n\n" + "\n\n".join(notes) + "\n\n" + \
        render_table(ours, label) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Write under a temporary name in the same directory, then rename: never a half-written file."""
    partial = path.parent / f".{path.name}.partial-{os.getpid()}"
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def evaluate(lm, tasks: list[str], task_dir: Path, limit: int | None) -> dict:
    """Run the zero-shot tasks and MMLU (5-shot) through lm_eval.simple_evaluate; the merged results."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    # only our tasks: they include the built-in YAMLs by path, and indexing all of lm-eval's takes seconds
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    calls = {"0-shot": ([t for t in tasks if t != MMLU], 0), f"{MMLU_FEWSHOT}-shot": ([MMLU] if MMLU in tasks else [],
                                                                                        MMLU_FEWSHOT)}
    runs = {}
    for label, (names, shots) in calls.items():
        if names:
            result = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, num_fewshot=shots,
                                             limit=limit, log_samples=False)
            if result is not None:  # None on processes other than 0
                runs[label] = result
    return merge_results(runs)


def write_outputs(results: dict, out: Path, ckpt: str, limit: int | None) -> str:
    """OUT/lm/results.json and OUT/lm/report.md; returns the report's text."""
    from lm_eval.utils import handle_non_serializable

    directory = out / "lm"
    directory.mkdir(parents=True, exist_ok=True)
    ours = table_values(results)
    results = {**results, "table3": ours}
    _write_atomic(directory / "results.json", json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
    report = render_report(ours, f"ours ({Path(ckpt).name})", ckpt, limit)
    _write_atomic(directory / "report.md", report)
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvlm eval lm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint directory (an LLM, or a VLM whose LLM is evaluated)")
    p.add_argument("--tasks", default="paper", help=f"'paper' (all ten Table-3 columns) or a comma list of "
                                                     f"{', '.join(KNOWN)}")
    p.add_argument("--data-root", required=True, help="local benchmark files (layout: mvlm_jax/eval/lm_tasks.py)")
    p.add_argument("--out", help="output directory; writes OUT/lm/results.json and OUT/lm/report.md")
    p.add_argument("--limit", type=int, help="only the first N documents of each task (a smoke test)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward (default 16)")
    p.add_argument("--max-length", type=int, help="context window (default the model's max_position_embeddings)")
    p.add_argument("--tokenizer", help="SentencePiece model (default CKPT/tokenizer.model)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="compute dtype (default the checkpoint's)")
    p.add_argument("--write-tasks", metavar="DIR", help="only write the task YAMLs into DIR (for `lm_eval "
                                                         "--include_path DIR`) and exit")
    return p


def harness_main(argv: Sequence[str]) -> int:
    """lm-eval's command line (`lm_eval ARGS`) in this process, after registering `mvlm_jax`: lm-eval 0.4.13
    reads no entry points, so the plain `lm_eval` script cannot find the model."""
    import mvlm_jax.eval.lm_harness  # noqa: F401  (registers the model)
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["harness"]:
        return harness_main(argv[1:])
    args = parser().parse_args(argv)
    try:
        tasks = parse_tasks(args.tasks)
        if args.write_tasks:
            task_dir = write_task_dir(args.data_root, args.write_tasks, tasks)
            print(f"wrote the task YAMLs of {', '.join(tasks)} to {task_dir}; run e.g.\n  mvlm eval lm harness "
                  f"--model mvlm_jax --model_args ckpt=CKPT --tasks {','.join(tasks)} "
                  f"--include_path {task_dir} --batch_size 16"
                  + (f" (mmlu: a separate run with --num_fewshot {MMLU_FEWSHOT})" if MMLU in tasks else ""))
            return 0
        if not args.ckpt or not args.out:
            raise ValueError("--ckpt and --out are required (unless --write-tasks)")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        check_data(args.data_root, tasks)  # before the model is loaded
        from mvlm_jax.eval.lm_harness import MvlmJaxLM

        lm = MvlmJaxLM(ckpt=args.ckpt, tokenizer=args.tokenizer, batch_size=args.batch_size,
                       max_length=args.max_length, dtype=args.dtype)
        with tempfile.TemporaryDirectory(prefix="mvlm-lm-tasks-") as task_dir:
            write_task_dir(args.data_root, task_dir, tasks)
            results = evaluate(lm, tasks, Path(task_dir), args.limit)
        if lm.rank != 0:
            return 0  # lm-eval aggregates on process 0
        print(write_outputs(results, Path(args.out), args.ckpt, args.limit))
        print(f"wrote {Path(args.out) / 'lm' / 'results.json'} and {Path(args.out) / 'lm' / 'report.md'}")
        return 0
    except (LMDataError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
