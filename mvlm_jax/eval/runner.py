"""Answering a benchmark: questions in the official order -> answer records appended as they come.

Files under OUT/<benchmark>/:
    answers.jsonl                  the checkpoint's answers (the official record format)
    answers_blind.jsonl            the same model with the image withheld (the blind baseline)
    answers_most_frequent.jsonl    the most frequent gold answer of each question type (closed sets only)
    answers_gguf-<file>.jsonl      the GGUF files' answers through llama.cpp
A re-run continues after the last complete record (a torn last line is cut off); records of another model
or of other questions in a file are an error, never mixed. With several processes each one answers a
contiguous slice of the questions into its own part file (as the official scripts split over GPUs), and
process 0 concatenates the parts in order once all are done, so the order POPE and MME rely on is kept.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from mvlm_jax.atomic import atomic_file
from mvlm_jax.eval import benchmark, records as records_io
from mvlm_jax.eval.answerers import Answerer
from mvlm_jax.eval.benchmark import Question

MODEL_RUN, BLIND_RUN, MAJORITY_RUN = "model", "blind", "most_frequent"


def answers_path(out: Path, name: str, run: str) -> Path:
    return Path(out) / name / ("answers.jsonl" if run == MODEL_RUN else f"answers_{run}.jsonl")


def gguf_run(gguf: str | Path) -> str:
    return f"gguf-{Path(gguf).stem}"




def record(question: Question, text: str, metadata: dict | None, model_id: str) -> dict:
    """An answer record as the official generators write it (answer_id: a stable id, not a random uuid;
    metadata.ids: the generated token ids, so two runtimes' answers compare token for token)."""
    answer_id = hashlib.sha1(repr((model_id, question.key, text)).encode()).hexdigest()[:22]
    return {"question_id": question.question_id, "prompt": question.prompt, "text": text, "answer_id": answer_id,
            "model_id": model_id, "metadata": metadata or {}, **question.record_extra}


def split_list(questions: Sequence[Question], process_index: int, process_count: int) -> list[Question]:
    """The contiguous slice of process `process_index` (sizes differ by at most one; in order)."""
    size, extra = divmod(len(questions), process_count)
    start = process_index * size + min(process_index, extra)
    return list(questions[start:start + size + (process_index < extra)])


def _resume(path: Path, questions: Sequence[Question], model_id: str, max_new_tokens: int) -> int:
    """How many of `questions` the file already answers, checked record by record."""
    records_io.complete_lines(path)
    done = records_io.read_records(path) if path.is_file() else []
    if len(done) > len(questions):
        raise ValueError(f"{path} holds {len(done)} answers but this run has {len(questions)} questions "
                         f"(another --limit?); use another --out or remove the file")
    for index, (old, question) in enumerate(zip(done, questions)):
        if (str(old["question_id"]), old["prompt"]) != question.key or old.get("model_id") != model_id:
            raise ValueError(f"{path}:{index + 1}: the answer of question {old['question_id']!r} by "
                             f"{old.get('model_id')!r} does not continue this run (question "
                             f"{question.question_id!r} by {model_id!r}); use another --out or remove the file")
        used = (old.get("metadata") or {}).get("max_new_tokens", max_new_tokens)
        if used != max_new_tokens:
            raise ValueError(f"{path}:{index + 1}: answered with max_new_tokens {used}, this run uses "
                             f"{max_new_tokens}; use another --out or remove the file")
    return len(done)


def _missing_image(question: Question) -> str | None:
    if question.image_path is not None and not Path(question.image_path).is_file():
        return str(question.image_path)
    return None


def answer_questions(path: Path, questions: Sequence[Question], answerer: Answerer, max_new_tokens: int,
                     blind: bool = False, chunk: int = 64, desc: str = "") -> int:
    """Append the answers of the questions not yet in `path`; returns how many were answered now.

    A question whose image file is missing gets a record with an empty answer and
    metadata.image_missing (scored as the official scorer scores an empty answer; listed in the report).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    start = _resume(path, questions, answerer.model_id, max_new_tokens)
    bar = tqdm(total=len(questions), initial=start, desc=desc, disable=None)
    for first in range(start, len(questions), chunk):
        batch = questions[first:first + chunk]
        missing = [None if blind else _missing_image(q) for q in batch]
        present = [q for q, m in zip(batch, missing) if m is None]
        answers = iter(answerer.answer(present, max_new_tokens, blind) if present else [])
        rows = []
        for question, image_missing in zip(batch, missing):
            if image_missing is None:
                answer = next(answers)
                metadata = {"ids": [int(i) for i in answer.ids], "max_new_tokens": max_new_tokens}
                rows.append(record(question, answer.text, metadata, answerer.model_id))
            else:
                rows.append(record(question, "", {"image_missing": image_missing, "max_new_tokens": max_new_tokens},
                                   answerer.model_id))
        records_io.append_records(path, rows)
        bar.update(len(batch))
    bar.close()
    return len(questions) - start


def _merge_parts(parts: Sequence[Path], final: Path) -> None:
    with atomic_file(final, force=True) as partial:
        with partial.open("wb") as out:
            for part in parts:
                out.write(part.read_bytes())
    for part in parts:
        part.unlink()


def answer_benchmark(name: str, data_root: Path, out: Path, answerer: Answerer, run: str = MODEL_RUN,
                     blind: bool = False, limit: int | None = None, chunk: int = 64,
                     process_index: int = 0, process_count: int = 1, max_new_tokens: int | None = None) -> Path:
    """Answer benchmark `name` (the first `limit` questions) into OUT/<name>/<run file>; returns its path.
    `max_new_tokens` overrides the official setting (quick runs; every record and the report say so).

    With process_count > 1 every process calls this with its own index; all must reach the end (a
    barrier), then process 0 concatenates the part files in order.
    """
    module = benchmark.module(name)
    benchmark.check_files(name, data_root)
    questions = module.questions(Path(data_root))[:limit]
    tokens = max_new_tokens or module.MAX_NEW_TOKENS
    final = answers_path(out, name, run)
    if final.is_file():  # a finished run: check it belongs to this model and these questions, then reuse
        _resume(final, questions, answerer.model_id, tokens)
        if len(records_io.read_records(final)) == len(questions):
            return final
        if process_count > 1:
            raise ValueError(f"{final} is incomplete; a multi-process run continues from part files only: "
                             f"re-run it with one process, or remove the file")
    if process_count == 1:
        answer_questions(final, questions, answerer, tokens, blind, chunk, desc=f"{name} {run}")
        return final
    part = final.with_name(f"{final.name}.part-{process_index:05d}-of-{process_count:05d}")
    answer_questions(part, split_list(questions, process_index, process_count), answerer, tokens, blind, chunk, desc=f"{name} {run} [{process_index}]")
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"mvlm eval {name} {run}")
    if process_index == 0:
        _merge_parts([final.with_name(f"{final.name}.part-{i:05d}-of-{process_count:05d}")
                      for i in range(process_count)], final)
    multihost_utils.sync_global_devices(f"mvlm eval {name} {run} merged")
    return final


def write_majority_answers(name: str, data_root: Path, out: Path, limit: int | None = None) -> Path | None:
    """The most-frequent-answer baseline as an answers file (None for open answer sets)."""
    module = benchmark.module(name)
    questions = module.questions(Path(data_root))[:limit]
    answers = module.majority_answers(questions, Path(data_root))
    if answers is None:
        return None
    path = answers_path(out, name, MAJORITY_RUN)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, force=True) as partial:
        partial.write_text("")
        records_io.append_records(partial, [record(q, a, None, MAJORITY_RUN) for q, a in zip(questions, answers)])
    return path
