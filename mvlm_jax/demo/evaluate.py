"""The demo's evaluation through the evaluation package: the embedded world's held-out questions are the
`demo_world` benchmark (mvlm_jax/eval/demo_world.py), answered by the checkpoint in JAX, by the same
model with the image withheld (the blind baseline), by the most frequent training answer of each question
type, and by the exported GGUF files in llama.cpp, whose answers are compared with JAX's token for token.

Files: WORKDIR/eval/demo_world/answers*.jsonl, scores.json, and WORKDIR/eval/report.md.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from mvlm_jax.atomic import atomic_file
from mvlm_jax.eval import benchmark, records, report, runner
from mvlm_jax.eval.demo_world import score

BENCHMARK = "demo_world"
BATCH_SIZE = 32


def write_json(path: Path, value: Any) -> None:
    with atomic_file(path, force=True) as partial:
        partial.write_text(json.dumps(value, indent=1) + "\n")


def forget_stale_outputs(workdir: Path, model_dir: Path, settings: Any) -> None:
    """Answers and GGUF files belong to one trained model and one set of questions: when the model
    checkpoint or the settings differ from those of the last run (a stage retrained, another --data),
    remove them so that they are made again."""
    stamp = {"model": (model_dir / "model_config.json").stat().st_mtime_ns, "data": settings.data,
             "questions": settings.questions, "llamacpp_questions": settings.llamacpp_questions}
    path = workdir / "outputs_of.json"
    if path.is_file() and json.loads(path.read_text()) == stamp:
        return
    for stale in workdir.glob("answers_*.json"):  # the files of earlier versions of the demo
        stale.unlink()
    shutil.rmtree(workdir / "eval", ignore_errors=True)
    shutil.rmtree(workdir / "gguf", ignore_errors=True)  # the demo's own exports
    write_json(path, stamp)


def answer_and_score(model_dir: Path, data_root: Path, out: Path, questions: int,
                     template: str = "vicuna_v1") -> dict[str, dict]:
    """The model's and the blind model's answers (prompts in `template`), the most-frequent-answer
    baseline; their scores."""
    from mvlm_jax.eval.answerers import JaxAnswerer

    answerer = JaxAnswerer.from_checkpoint(model_dir, batch_size=BATCH_SIZE, template=template)
    benchmark.check_files([BENCHMARK], data_root)
    asked = benchmark.module(BENCHMARK).questions(data_root)[:questions]
    runner.answer_benchmark(BENCHMARK, asked, out, answerer, runner.MODEL_RUN)
    runner.answer_benchmark(BENCHMARK, asked, out, answerer, runner.BLIND_RUN, blind=True)
    runner.write_majority_answers(BENCHMARK, asked, data_root, out)
    scores = report.score_benchmark(BENCHMARK, data_root, out, questions)
    report.write_report(out)
    return scores


def export_files(model_dir: Path, out: Path, types: Sequence[str]) -> dict[str, tuple[Path, Path]]:
    """GGUF files per LLM type (the mmproj is shared); files already complete are reused."""
    from mvlm_jax.export.gguf_file import export_gguf, output_paths

    files = {}
    for file_type in types:
        paths = output_paths(out, "mobilevlm-demo", file_type, vision=True)
        if not all(p.is_file() for p in paths):  # the demo's own files: rewriting one (atomically) is safe
            export_gguf(model_dir, out, file_type, name="mobilevlm-demo", force=True)
        files[file_type] = (paths[0], paths[1])
    return files


def stored_weights_answers(model_dir: Path, file_type: str, data_root: Path, out: Path, questions: int) -> Path:
    """JAX's answers to the first `questions` questions with the LLM weights the GGUF file of `file_type`
    holds (export.llm_gguf.as_stored): what llama.cpp should answer if only the weights' rounding, and not
    the runtime, separates it from the trained model. f32 stores the trained weights: the model's answers."""
    if file_type == "f32":
        return runner.answers_path(out, BENCHMARK, runner.MODEL_RUN)
    from mvlm_jax.checkpoint import load_model
    from mvlm_jax.eval.answerers import JaxAnswerer
    from mvlm_jax.export.llm_gguf import as_stored
    from mvlm_jax.generate.prompts import find_tokenizer

    params, config = load_model(model_dir)
    params = {**params, "llm": as_stored(params["llm"], file_type)}
    run = f"jax-{file_type}-weights"
    answerer = JaxAnswerer(config, params, find_tokenizer(model_dir, None), run, f"{file_type}-weights",
                           batch_size=BATCH_SIZE)
    return runner.answer_benchmark(BENCHMARK, benchmark.module(BENCHMARK).questions(data_root)[:questions], out,
                                   answerer, run)


def _same(ours: list[dict], theirs: list[dict]) -> tuple[int, int]:
    """(same answer texts, same token ids) of two answer lists, pairwise."""
    return (sum(a["text"] == b["text"] for a, b in zip(ours, theirs)),
            sum(a["metadata"].get("ids") == b["metadata"].get("ids") for a, b in zip(ours, theirs)))


def llamacpp_agreement(files: tuple[Path, Path], data_root: Path, out: Path, questions: int,
                       stored_answers: Path | None = None) -> dict:
    """llama.cpp's greedy answers to the first `questions` questions, against JAX's answers to them (and,
    given `stored_answers`, against JAX's on the weights the file stores: stored_weights_answers)."""
    from mvlm_jax.eval.answerers import LlamaCppAnswerer
    from mvlm_jax.eval.demo_world import MAX_NEW_TOKENS

    run = runner.gguf_run(files[0])
    answerer = LlamaCppAnswerer(files[0], files[1], max_new_tokens=MAX_NEW_TOKENS)
    try:  # answers what an earlier, interrupted run left unanswered (nothing when it finished)
        runner.answer_benchmark(BENCHMARK, benchmark.module(BENCHMARK).questions(data_root)[:questions], out,
                                answerer, run)
    finally:
        answerer.close()
    ours = records.read_records(runner.answers_path(out, BENCHMARK, runner.MODEL_RUN))[:questions]
    theirs = records.read_records(runner.answers_path(out, BENCHMARK, run))
    same_answers, same_tokens = _same(ours, theirs)
    result = {"questions": len(theirs), "same_answers": same_answers, "same_tokens": same_tokens,
              "accuracy": score(theirs, data_root, limit=len(theirs))["accuracy"],
              "jax_accuracy": score(ours, data_root, limit=len(theirs))["accuracy"]}
    if stored_answers is not None:
        result["same_tokens_stored_weights"] = _same(records.read_records(stored_answers)[:questions], theirs)[1]
    return result
