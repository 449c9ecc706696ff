"""Answering a benchmark: questions in the official order -> answer records appended as they come.

Files under OUT/<benchmark>/:
    answers.jsonl                  the checkpoint's answers (the official record format)
    answers_blind.jsonl            the same model with the image withheld (the blind baseline)
    answers_most_frequent.jsonl    the most frequent gold answer of each question type (closed sets only)
    answers_gguf-<file>.jsonl      the GGUF files' answers through llama.cpp
A re-run continues after the last complete record (a torn last line is cut off); records of another model,
of other questions or of another max_new_tokens are an error, never mixed. A file that already answers
more questions than a run asks for (another --limit) serves the run's first ones. With several processes
each one answers a contiguous slice of the questions into its own part file (as the official scripts split
over GPUs); OUT must be on a filesystem every process sees. Process 0 concatenates the parts in order once
all are done, so the order POPE and MME rely on is kept; a process that fails makes all of them fail.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

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
    metadata: the generated token ids, so two runtimes' answers compare token for token, and the settings
    a resumed run must share)."""
    answer_id = hashlib.sha1(repr((model_id, question.key, text)).encode()).hexdigest()[:22]
    return {"question_id": question.question_id, "prompt": question.prompt, "text": text, "answer_id": answer_id,
            "model_id": model_id, "metadata": metadata or {}, **question.record_extra}


def split_list(questions: Sequence, process_index: int, process_count: int) -> list:
    """The contiguous slice of process `process_index` (sizes differ by at most one; in order)."""
    size, extra = divmod(len(questions), process_count)
    start = process_index * size + min(process_index, extra)
    return list(questions[start:start + size + (process_index < extra)])


def _resume(path: Path, questions: Sequence[Question], answerer: Answerer, max_new_tokens: int) -> int:
    """How many of `questions` the file already answers (at most all of them), checked record by record."""
    records_io.complete_lines(path)
    done = records_io.read_records(path) if path.is_file() else []
    for index, (old, question) in enumerate(zip(done, questions)):
        metadata = old.get("metadata") or {}
        if (str(old["question_id"]), old["prompt"]) != question.key or old.get("model_id") != answerer.model_id:
            raise ValueError(f"{path}:{index + 1}: the answer of question {old['question_id']!r} by "
                             f"{old.get('model_id')!r} does not continue this run (question "
                             f"{question.question_id!r} by {answerer.model_id!r}); use another --out or remove the file")
        if metadata.get("fingerprint", answerer.fingerprint) != answerer.fingerprint:
            raise ValueError(f"{path}:{index + 1}: answered by another version of {answerer.model_id!r} (its files "
                             f"changed since); use another --out or remove the file")
        if metadata.get("max_new_tokens", max_new_tokens) != max_new_tokens:
            raise ValueError(f"{path}:{index + 1}: answered with max_new_tokens {metadata['max_new_tokens']}, this "
                             f"run uses {max_new_tokens}; use another --out or remove the file")
    return min(len(done), len(questions))


def answer_questions(path: Path, questions: Sequence[Question], answerer: Answerer, max_new_tokens: int,
                     blind: bool = False, desc: str = "") -> int:
    """Append the answers of the questions not yet in `path`, one batch at a time; returns how many were
    answered now. A question whose image is missing or unreadable gets an empty answer and
    metadata.image_error (scored as the official scorer scores an empty answer; listed in the report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start = _resume(path, questions, answerer, max_new_tokens)
    bar = tqdm(total=len(questions), initial=start, desc=desc, disable=None)
    for first in range(start, len(questions), answerer.batch_size):
        batch = questions[first:first + answerer.batch_size]
        rows = []
        for question, answer in zip(batch, answerer.answer(batch, max_new_tokens, blind)):
            metadata = {"ids": [int(i) for i in answer.ids], "max_new_tokens": max_new_tokens,
                        "fingerprint": answerer.fingerprint}
            if answer.image_error is not None:
                metadata["image_error"] = answer.image_error
            rows.append(record(question, answer.text, metadata, answerer.model_id))
        records_io.append_records(path, rows)
        bar.update(len(batch))
    bar.close()
    return len(questions) - start


def _all_processes(work: Callable[[], None], what: str) -> None:
    """Run `work` on every process; when one fails, every process raises (none waits forever)."""
    import numpy as np
    from jax.experimental import multihost_utils

    error: Exception | None = None
    try:
        work()
    except Exception as caught:  # reported below, on every process
        error = caught
    failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
    if error is not None:
        raise error
    if failed.any():
        raise RuntimeError(f"{what}: process(es) {np.flatnonzero(failed).tolist()} failed (see their logs)")


def answer_benchmark(name: str, questions: Sequence[Question], out: Path, answerer: Answerer, run: str = MODEL_RUN,
                     blind: bool = False, process_index: int = 0, process_count: int = 1,
                     max_new_tokens: int | None = None) -> Path:
    """Answer `questions` of benchmark `name` (its questions(), or their first N) into OUT/<name>/<run file>;
    returns its path. The caller loads the questions once for all runs and checks the benchmark's files
    first (benchmark.check_files). `max_new_tokens` overrides the official setting (quick runs; every
    record and the report say so). With process_count > 1 every process calls this with its own index
    (a collective call).
    """
    module = benchmark.module(name)
    tokens = max_new_tokens or module.MAX_NEW_TOKENS
    final = answers_path(out, name, run)
    desc = f"{name} {run}"
    if process_count == 1:
        answer_questions(final, questions, answerer, tokens, blind, desc)
        return final
    if final.is_file() and _resume(final, questions, answerer, tokens) == len(questions):
        return final  # finished before (every process reads the same file)
    if final.is_file():
        raise ValueError(f"{final} is incomplete; a multi-process run continues from part files only: "
                         f"finish it with one process, or remove the file")
    parts = [final.with_name(f"{final.name}.part-{i:05d}-of-{process_count:05d}") for i in range(process_count)]
    mine = split_list(questions, process_index, process_count)
    _all_processes(lambda: answer_questions(parts[process_index], mine, answerer, tokens, blind,
                                            f"{desc} [{process_index}]"), desc)

    def merge() -> None:
        if process_index:
            return
        absent = [str(p) for p in parts if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"process 0 cannot see {', '.join(absent)}: --out must be on a filesystem "
                                    f"that every process shares")
        with atomic_file(final, force=True) as partial:
            with partial.open("wb") as handle:
                for part in parts:
                    handle.write(part.read_bytes())
        for part in parts:
            part.unlink()
    _all_processes(merge, f"{desc}: merging the parts")
    return final


def write_majority_answers(name: str, questions: Sequence[Question], data_root: Path, out: Path) -> Path | None:
    """The most-frequent-answer baseline for `questions` as an answers file (None for open answer sets)."""
    answers = benchmark.module(name).majority_answers(questions, Path(data_root))
    if answers is None:
        return None
    path = answers_path(out, name, MAJORITY_RUN)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, force=True) as partial:
        partial.write_text("")
        records_io.append_records(partial, [record(q, a, None, MAJORITY_RUN) for q, a in zip(questions, answers)])
    return path
