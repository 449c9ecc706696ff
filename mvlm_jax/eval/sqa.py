"""ScienceQA (Lu et al. 2022), test split; the paper reports SQA-I, the accuracy on the questions with an image.

Files under the data root (MobileVLM's benchmark_data layout):
    sqa/llava_test_CQM-A.json  LLaVA's question file, a JSON list of {"id", "image"?: "<id>/image.png",
                               "conversations": [{"from": "human", "value": "<image>\\nContext: ...\\n<question>\\n
                               A. ...\\nB. ..."}, {"from": "gpt", "value": "<letter>"}]}
    sqa/pid_splits.json        ScienceQA's splits: {"test": [problem ids], ...}
    sqa/problems.json          ScienceQA's problems: {id: {"choices": [...], "answer": <index>, "subject", ...}}
    sqa/images/test/<id>/image.png

Generation (MobileVLM mobilevlm/eval/model_vqa_science.py with --single-pred-prompt, scripts/benchmark/sqa.sh):
"<image>" is removed from the human value, which is stripped; the instruction "Answer with the option's letter
from the given choices directly." follows on a new line; an image question gets "<image>\\n" in front, in the
model's turn and in the record's "prompt". The image is NOT padded to a square (plain CLIP preprocessing).

Scoring (LLaVA llava/eval/eval_science_qa.py, as sqa.sh calls it): for every id of pid_splits["test"], the
answer is the text if it is one of A-E, else its first letter if it starts with "<letter>. ", else the one
match of r'The answer is ([A-Z]).', else FAILED ("A." and "a" fail). A missing answer is FAILED. Correct when
the letter is within the problem's choices and is its answer. IMG-Accuracy counts the records whose prompt
contains "<image>" (so a missing answer, whose prompt is unknown, is left out of the IMG subset).
"""
from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import Any, Sequence

from mvlm_jax.eval.benchmark import BenchmarkFileError, Question
from mvlm_jax.eval.records import match_records

NAME = "sqa"
MAX_NEW_TOKENS = 1024  # model_vqa_science.py
SCORE_KEYS = ("img_accuracy", "accuracy")
SPLIT = "test"
QUESTION_FILE = "sqa/llava_test_CQM-A.json"
SPLITS_FILE = "sqa/pid_splits.json"
PROBLEMS_FILE = "sqa/problems.json"
IMAGE_DIR = "sqa/images/test"
INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPTIONS = ("A", "B", "C", "D", "E")  # eval_science_qa.py's --options default
FAILED = "FAILED"
ANSWER_PATTERN = re.compile(r"The answer is ([A-Z]).")  # '.' is any character, as in the official regex
FILES = {QUESTION_FILE: "LLaVA's ScienceQA test questions (a JSON list, CQM-A format)",
         SPLITS_FILE: "ScienceQA's pid_splits.json (problem ids per split)",
         PROBLEMS_FILE: "ScienceQA's problems.json (choices and answer index of every problem)"}


def required_files(data_root: Path) -> dict[Path, str]:
    return {Path(data_root) / name: what for name, what in FILES.items()}


def _load_json(data_root: Path, name: str) -> Any:
    path = Path(data_root) / name
    if not path.is_file():
        raise BenchmarkFileError(f"{path} is missing: {FILES[name]}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def _problems(data_root: Path) -> dict[str, dict]:
    problems = _load_json(data_root, PROBLEMS_FILE)
    if not isinstance(problems, dict):
        raise ValueError(f"{Path(data_root) / PROBLEMS_FILE}: expected an object of problems keyed by id")
    return problems


def _problem(problems: dict[str, dict], pid: str, data_root: Path) -> dict:
    problem = problems.get(pid)
    if not isinstance(problem, dict) or "choices" not in problem or "answer" not in problem:
        raise ValueError(f"{Path(data_root) / PROBLEMS_FILE}: problem {pid!r} is missing or has no choices/answer")
    return problem


def questions(data_root: Path) -> list[Question]:
    """The test questions in the file's order; category = the problem's subject ("default" if unknown)."""
    data_root = Path(data_root)
    items = _load_json(data_root, QUESTION_FILE)
    subjects = {pid: p.get("subject", "default") for pid, p in _problems(data_root).items() if isinstance(p, dict)}
    out = []
    for index, item in enumerate(items):
        try:
            value = item["conversations"][0]["value"]
            pid = str(item["id"])
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{data_root / QUESTION_FILE}: item {index} has no id or no "
                             f"conversations[0].value") from None
        text = value.replace("<image>", "").strip() + "\n" + INSTRUCTION
        image = item.get("image")
        out.append(Question(question_id=pid, text=text, prompt=("<image>\n" + text) if image else text,
                            image_path=data_root / IMAGE_DIR / image if image else None, pad=False,
                            category=subjects.get(pid, "default")))
    return out


def parse_answer(text: str) -> str:
    """The letter eval_science_qa.py reads from an answer, or "FAILED"."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    matches = ANSWER_PATTERN.findall(text)
    return matches[0] if len(matches) == 1 else FAILED


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole


def score(records: Sequence[dict], data_root: Path, limit: int | None = None) -> dict:
    """{"img_accuracy", "accuracy" (percent), "img_questions", "img_correct", "img_missing" (missing answers
    to image problems: outside the IMG subset, as in the official scorer), "questions", "correct", "answered",
    "missing" (scored FAILED), "unparsed" (answers parsed as FAILED)}.

    `limit`: the answers cover only the first `limit` questions of the question file.
    AnswerError for a record of an id outside the split or two records of one id. img_accuracy is None
    when no record has an image prompt (the official scorer divides by zero).
    """
    data_root = Path(data_root)
    splits = _load_json(data_root, SPLITS_FILE)
    if not isinstance(splits, dict) or not isinstance(splits.get(SPLIT), list):
        raise ValueError(f"{data_root / SPLITS_FILE}: no list of {SPLIT!r} problem ids")
    split = [str(pid) for pid in splits[SPLIT]]
    if limit is not None:
        kept = {q.question_id for q in questions(data_root)[:limit]}
        split = [pid for pid in split if pid in kept]
    if not split:
        raise ValueError(f"{data_root / SPLITS_FILE}: no {SPLIT} problem to score")
    problems = _problems(data_root)
    matched, missing = match_records(records, split, lambda r: str(r["question_id"]), NAME, missing_ok=True)
    correct = img_correct = img_total = img_missing = unparsed = 0
    for pid, record in zip(split, matched):
        problem = _problem(problems, pid, data_root)
        img_missing += record is None and bool(problem.get("image"))
        letter = parse_answer(record["text"]) if record is not None else FAILED
        unparsed += record is not None and letter == FAILED
        valid = OPTIONS[:len(problem["choices"])]
        hit = letter in valid and valid.index(letter) == problem["answer"]
        correct += hit
        if record is not None and "<image>" in record["prompt"]:
            img_total += 1
            img_correct += hit
    # no record with an image prompt: the official scorer divides by zero; here IMG-Accuracy is None
    return {"img_accuracy": _percent(img_correct, img_total) if img_total else None,
            "accuracy": _percent(correct, len(split)),
            "img_questions": img_total, "img_correct": img_correct, "img_missing": img_missing,
            "questions": len(split), "correct": correct, "answered": len(split) - len(missing),
            "missing": len(missing), "unparsed": unparsed}


def majority_answers(questions_: Sequence[Question], data_root: Path) -> list[str]:
    """Per question, the most frequent gold letter among the given questions of its subject (ties: the
    alphabetically first): an answer the scorer parses."""
    problems = _problems(Path(data_root))
    gold = [OPTIONS[_problem(problems, str(q.question_id), Path(data_root))["answer"]] for q in questions_]
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for question, letter in zip(questions_, gold):
        counts[question.category][letter] += 1
    top = {kind: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for kind, c in counts.items()}
    return [top[q.category] for q in questions_]
