"""Answer records: reading and appending the official jsonl format, and matching records to questions.

An answers file holds one JSON object per line, as the official generators write them:
    {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} (+ MMBench's round_id, options,
    option_char). Files written by the official PyTorch code and by `mvlm eval vlm` are interchangeable.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Hashable, Iterable, Iterator, Sequence

from mvlm_jax.eval.benchmark import AnswerError

REQUIRED_KEYS = ("question_id", "prompt", "text")
SHOWN_IDS = 10  # ids named in an error message; the count says how many more


def json_lines(path: Path, torn_tail_ok: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line of a JSON-lines file; ValueError naming the file and
    line of one that is not a JSON object. torn_tail_ok: a last line without newline that is not valid
    JSON (an interrupted append) ends the file instead."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            if torn_tail_ok and number == len(lines) and not text.endswith("\n"):
                return
            raise ValueError(f"{path}:{number}: not a JSON object ({error.msg})") from None
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(item).__name__}")
        yield number, item


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every record of a jsonl answers file; ValueError naming the file and line of a bad one. A last line
    cut short by an interruption (no newline, not valid JSON) is dropped: appends resume after it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: answers file not found")
    records = []
    for number, record in json_lines(path, torn_tail_ok=True):
        absent = [key for key in REQUIRED_KEYS if key not in record]
        if absent:
            raise ValueError(f"{path}:{number}: answer record without {', '.join(absent)} "
                             f"(the official format has question_id, prompt, text, answer_id, model_id, metadata)")
        records.append(record)
    return records


def complete_lines(path: str | os.PathLike) -> int:
    """Cut a torn last line (an interrupted append) off the file; returns the number of whole lines."""
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with path.open("r+b") as handle:
            handle.truncate(len(whole))
    return whole.count(b"\n")


def append_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records as lines, flushed and synced, so an interrupted run keeps every finished answer."""
    with Path(path).open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _named(keys: Sequence[Hashable]) -> str:
    shown = ", ".join(repr(k) for k in keys[:SHOWN_IDS])
    return shown + (f" and {len(keys) - SHOWN_IDS} more" if len(keys) > SHOWN_IDS else "")


def match_records(records: Sequence[dict], expected: Sequence[Hashable], key_of: Callable[[dict], Hashable],
                  benchmark: str, missing_ok: bool) -> tuple[list[dict | None], list[Hashable]]:
    """Records in the order of `expected` keys: (per key its record or None, the missing keys).

    AnswerError naming the keys when a record's key is not a question of the benchmark, when two records
    have the same key, or (unless `missing_ok`: the official scorer counts a missing answer as wrong)
    when a question has no record.
    """
    wanted = set(expected)
    by_key: dict[Hashable, dict] = {}
    unknown, duplicate = [], []
    for record in records:
        key = key_of(record)
        if key not in wanted:
            unknown.append(key)
        elif key in by_key:
            duplicate.append(key)
        else:
            by_key[key] = record
    if unknown:
        raise AnswerError(f"{benchmark}: {len(unknown)} answer record(s) for questions not in the benchmark: "
                          f"{_named(unknown)}")
    if duplicate:
        raise AnswerError(f"{benchmark}: {len(duplicate)} duplicate answer record(s): {_named(duplicate)}")
    missing = [key for key in expected if key not in by_key]
    if missing and not missing_ok:
        raise AnswerError(f"{benchmark}: {len(missing)} question(s) without an answer record: {_named(missing)}")
    return [by_key.get(key) for key in expected], missing
