"""MMBench dev (Liu et al. 2023), English, the 2023-10-03 release, scored with circular evaluation.

File under the data root (MobileVLM's benchmark_data layout):
    mmbench/mmbench_dev_en_20231003.tsv  columns index, question, hint, A, B, C, D, answer, category, image
        (base64), source, l2-category, comment, split. Rows with index >= 1,000,000 are copies of row
        index % 1,000,000 with the options rotated (and the answer letter moved with them).

Generation (MobileVLM mobilevlm/eval/model_vqa_mmbench.py with --single-pred-prompt --lang en, no
--all-rounds; scripts/benchmark/mmbench.sh): one pass per row; the options are A-D up to the first missing one
(a cell pandas reads as NaN, or the text "nan"/"none" in any case); the question is [hint + "\\n"] + question +
"\\nA. option" ... and the model's turn adds "\\nAnswer with the option's letter from the given choices
directly."; the record's "prompt" is the question without that instruction, and the record carries round_id 0,
options and option_char. The decoded image is padded to a square.

Scoring: MMBench's evaluator as ported in lmms-eval (lmms_eval/tasks/mmbench/mmbench_evals.py; the same rules
as OpenCompass's 2023 eval_mmbench.py, whose `RESULT.xlsx --meta TSV` call MobileVLM's eval.py mirrors), without
its GPT judge: the letter is read from the answer by its option rule (the one A-E token among the words,
unless the answer has "A" and more than three words, where "A" may be an article; else the one letter in one
of the forms "A." "A," "A:" "A)" "A)." "(A)" "(A)." ":A" ":A," ":A." ":A)" ":A)."), else by its text rule
(exactly one option's text inside the answer, case-insensitive). An answer
neither rule reads is wrong (where the official evaluator would ask GPT) and counted as unparsed; a missing
answer is wrong (the official submission leaves its prediction empty). A question is right only when every
row of its group (the row and its rotated copies) is right: circular accuracy, overall and per category and
l2-category; vanilla accuracy scores the original rows alone.
"""
from __future__ import annotations

import base64
import binascii
import collections
import csv
from pathlib import Path
from typing import Sequence

from mvlm_jax.eval.benchmark import BenchmarkFileError, Question
from mvlm_jax.eval.records import match_records

NAME = "mmbench"
MAX_NEW_TOKENS = 1024  # model_vqa_mmbench.py
SCORE_KEYS = ("circular_accuracy", "vanilla_accuracy")
TSV_FILE = "mmbench/mmbench_dev_en_20231003.tsv"
OPTION_CHARS = ("A", "B", "C", "D")
INSTRUCTION = "Answer with the option's letter from the given choices directly."
CIRCULAR_BASE = 1_000_000
COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image")
# The strings pandas.read_table reads as NaN by default (pandas 2.x); the official generator reads the TSV
# with pandas, so these cells are missing options or hints.
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
# can_infer_option: letters A-E (num_choice=5; E is "none of the options"), the wrapped forms it accepts
LETTERS = "ABCDE"
WRAPPED = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."),
           (":", ""), (":", ","), (":", "."), (":", ")"), (":", ")."))


def required_files(data_root: Path) -> dict[Path, str]:
    return {Path(data_root) / TSV_FILE: "the MMBench dev (en, 20231003) TSV with base64 images"}


def read_rows(data_root: Path) -> list[dict]:
    """The TSV's rows in file order, as {column: text} with "index" as an int."""
    path = Path(data_root) / TSV_FILE
    if not path.is_file():
        raise BenchmarkFileError(f"{path} is missing: {required_files(data_root)[path]}")
    limit = csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # the base64 image column
    try:
        rows, seen = [], set()
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t")
            header = next(reader, [])
            absent = [c for c in COLUMNS if c not in header]
            if absent:
                raise ValueError(f"{path}: no column {', '.join(absent)} (header: {', '.join(header)})")
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise ValueError(f"{path}:{reader.line_num}: {len(fields)} fields, the header has {len(header)}")
                row = dict(zip(header, fields))
                try:
                    row["index"] = int(row["index"])
                except ValueError:
                    raise ValueError(f"{path}:{reader.line_num}: index {row['index']!r} is not an integer") from None
                if row["index"] in seen:
                    raise ValueError(f"{path}:{reader.line_num}: index {row['index']} appears twice")
                seen.add(row["index"])
                rows.append(row)
    finally:
        csv.field_size_limit(limit)  # the process-wide limit as it was
    return rows


def is_none(value: str) -> bool:
    """model_vqa_mmbench.is_none of the value pandas reads from the cell."""
    return value in PANDAS_NA or value.lower() in ("nan", "none")


def options(row: dict) -> list[str]:
    """The options the generator shows: A, B, ... up to the first missing one."""
    shown = []
    for char in OPTION_CHARS:
        if is_none(row[char]):
            break
        shown.append(row[char])
    return shown


def choices(row: dict) -> dict[str, str]:
    """The options the scorer matches answer texts against: every A-D cell that is not NaN."""
    return {char: row[char] for char in OPTION_CHARS if row[char] not in PANDAS_NA}


def question_text(row: dict) -> str:
    """[hint + "\\n"] + question + "\\nA. option" ... : the record's prompt."""
    text = row["question"] if is_none(row["hint"]) else row["hint"] + "\n" + row["question"]
    return text + "".join(f"\n{char}. {option}" for char, option in zip(OPTION_CHARS, options(row)))


def questions(data_root: Path) -> list[Question]:
    """One question per TSV row, in file order; question_id = the row's index."""
    out = []
    for row in read_rows(Path(data_root)):
        try:
            if row["image"].strip().isdigit():  # VLMEvalKit's compact TSVs point a copy to another row's image
                raise ValueError
            image = base64.b64decode(row["image"])
        except (binascii.Error, ValueError):
            raise ValueError(f"{Path(data_root) / TSV_FILE}: the image of index {row['index']} is not a base64 "
                             f"image (the official generator decodes every row's own image)") from None
        shown = options(row)
        prompt = question_text(row)
        out.append(Question(question_id=row["index"], text=prompt + "\n" + INSTRUCTION, prompt=prompt,
                            image_bytes=image, category=row["category"],
                            record_extra={"round_id": 0, "options": shown,
                                          "option_char": list(OPTION_CHARS[:len(shown)])}))
    return out


def infer_option(answer: str) -> str | None:
    """The letter MMBench's option rule reads from an answer, or None."""
    if "Failed to obtain answer via API" in answer:
        return None
    tokens = answer.split()
    bare = [c for c in LETTERS if c in tokens]
    # one bare letter, unless "A" could be the article of a sentence (more than three words)
    if len(bare) == 1 and not ("A" in tokens and len(tokens) > 3):
        return bare[0]
    for prefix, suffix in WRAPPED:
        found = [c for c in LETTERS if prefix + c + suffix in tokens]
        if len(found) == 1:
            return found[0]
    return None


def infer_text(answer: str, options_: dict[str, str]) -> str | None:
    """The letter of the one option whose text is inside the answer (case-insensitive), or None."""
    lowered = answer.lower()
    found = [char for char, text in options_.items() if text.lower() in lowered]
    return found[0] if len(found) == 1 else None


def extract(answer: str, options_: dict[str, str]) -> str | None:
    """MMBench's can_infer: the option rule, then the text rule."""
    return infer_option(answer) or infer_text(answer, options_)


def _percent(values: Sequence[bool]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def score(records: Sequence[dict], data_root: Path, limit: int | None = None) -> dict:
    """{"circular_accuracy", "vanilla_accuracy" (percent), "per_category", "per_l2_category" ({name: circular
    accuracy}), "questions" (rows), "groups", "answered", "missing", "unparsed"}.

    `limit`: the answers cover only the first `limit` rows; a group is then the rows among those.
    AnswerError for a record of an unknown index or two records of one index.
    """
    rows = read_rows(Path(data_root))[:limit]
    matched, missing = match_records(records, [str(r["index"]) for r in rows], lambda r: str(r["question_id"]),
                                     NAME, missing_ok=True)
    right: dict[int, bool] = {}
    unparsed = 0
    for row, record in zip(rows, matched):
        letter = extract(record["text"], choices(row)) if record is not None else None
        unparsed += record is not None and letter is None
        right[row["index"]] = letter is not None and letter == row["answer"]
    group_rows: dict[int, list[bool]] = collections.defaultdict(list)
    for row in rows:
        group_rows[row["index"] % CIRCULAR_BASE].append(right[row["index"]])
    main = [row for row in rows if row["index"] < CIRCULAR_BASE]  # a copy without its original is not scored
    hit = {row["index"]: all(group_rows[row["index"]]) for row in main}
    by_category: dict[str, list[bool]] = collections.defaultdict(list)
    by_l2: dict[str, list[bool]] = collections.defaultdict(list)
    for row in main:
        by_category[row["category"]].append(hit[row["index"]])
        if "l2-category" in row:
            by_l2[row["l2-category"]].append(hit[row["index"]])
    return {"circular_accuracy": _percent(list(hit.values())),
            "vanilla_accuracy": _percent([right[row["index"]] for row in main]),
            "per_category": {name: _percent(v) for name, v in sorted(by_category.items())},
            "per_l2_category": {name: _percent(v) for name, v in sorted(by_l2.items())},
            "questions": len(rows), "groups": len(main), "answered": len(rows) - len(missing),
            "missing": len(missing), "unparsed": unparsed}


def majority_answers(questions_: Sequence[Question], data_root: Path) -> list[str]:
    """Per question, the most frequent gold letter of its category among the given questions (ties: the
    alphabetically first). Circular evaluation makes a constant letter score about 0, as it is meant to."""
    gold = {row["index"]: row["answer"] for row in read_rows(Path(data_root))}
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for question in questions_:
        counts[question.category][gold[question.question_id]] += 1
    top = {name: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for name, c in counts.items()}
    return [top[q.category] for q in questions_]
