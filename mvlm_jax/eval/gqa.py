"""GQA (testdev-balanced, 12,578 questions): the official prompts and the official accuracy.

Generator: MobileVLM mobilevlm/eval/model_vqa_loader.py (as LLaVA llava/eval/model_vqa_loader.py): one
question a line of `llava_gqa_testdev_balanced.jsonl`, the record's prompt is the line's "text" (the suffix
"\\nAnswer the question using a single word or phrase." is already in it), images padded to a square,
greedy, at most 128 new tokens.
Scorer: LLaVA scripts/convert_gqa_for_eval.py (prediction = text.rstrip('.').lower()), then the official GQA
eval.py over `testdev_balanced_questions.json`: a raw exact string match against "answer", averaged over the
questions with "isBalanced" (all of testdev-balanced), with "binary"/"open" (structural type "query" is open)
and per structural/semantic type accuracies. eval.py raises on a balanced question without a prediction, so
a missing answer is an AnswerError here too.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from mvlm_jax.eval.benchmark import AnswerError, Question
from mvlm_jax.eval.loader_format import loader_questions, require
from mvlm_jax.eval.records import match_records

NAME = "gqa"
MAX_NEW_TOKENS = 128  # hard-coded in mobilevlm/eval/model_vqa_loader.py
SCORE_KEYS = ("accuracy",)

QUESTION_FILE = "gqa/llava_gqa_testdev_balanced.jsonl"
ANNOTATION_FILE = "gqa/testdev_balanced_questions.json"
IMAGE_DIR = "gqa/images"


def required_files(data_root: Path) -> dict[Path, str]:
    """The files the generator and the scorer read, each with what belongs there."""
    root = Path(data_root)
    return {
        root / QUESTION_FILE: "LLaVA's GQA testdev-balanced question file (jsonl: question_id, image, text, "
                              "category; 12,578 lines)",
        root / ANNOTATION_FILE: "the official GQA testdev_balanced_questions.json (questionId -> question with "
                                "answer, isBalanced, types)",
        root / IMAGE_DIR: "the GQA images folder (n161313.jpg, ...)",
    }


def questions(data_root: Path) -> list[Question]:
    """Every GQA question in file order; question_id is a string, category "default" as in LLaVA's file."""
    root = Path(data_root)
    question_file = root / QUESTION_FILE
    return loader_questions(question_file, root / IMAGE_DIR, NAME, required_files(root)[question_file])


def prediction(text: str) -> str:
    """What convert_gqa_for_eval.py makes of an answer: trailing periods stripped, lower-cased; nothing else
    (no whitespace strip, no article removal)."""
    return text.rstrip(".").lower()


def _percent(scores: list[float]) -> float:
    return 100.0 * sum(scores) / len(scores) if scores else 0.0  # eval.py's avg() of an empty list is 0


def score(records: list[dict], data_root: Path, limit: int | None = None) -> dict:
    """The official GQA accuracy of answer records (covering the first `limit` questions; all by default).

    Returns {"accuracy", "binary", "open" (percent), "per_structural_type", "per_semantic_type" ({type:
    percent}), "questions" (the file's, or its first `limit`), "answered", "missing" (always 0: a missing
    answer is an AnswerError, as eval.py raises), "scored" (the balanced ones among them)}.
    AnswerError naming unknown, duplicate or missing question ids; ValueError when the annotation file lacks
    a question of the question file.
    """
    root = Path(data_root)
    items = questions(root)[:limit]
    ids = [str(question.question_id) for question in items]
    matched, missing = match_records(records, ids, key_of=lambda record: str(record["question_id"]),
                                     benchmark=NAME, missing_ok=False)
    annotation_path = require(root / ANNOTATION_FILE, required_files(root)[root / ANNOTATION_FILE])
    annotations = json.loads(annotation_path.read_text(encoding="utf-8"))
    absent = [qid for qid in ids if qid not in annotations]
    if absent:
        raise ValueError(f"{annotation_path}: no annotation for {len(absent)} question(s) of "
                         f"{root / QUESTION_FILE}: {', '.join(absent[:10])}")
    accuracy, by_answer_type = [], defaultdict(list)
    per_structural, per_semantic = defaultdict(list), defaultdict(list)
    for qid, record in zip(ids, matched):
        annotation = annotations[qid]
        if "answer" not in annotation or "isBalanced" not in annotation:
            raise ValueError(f"{annotation_path}: question {qid} has no answer or isBalanced")
        if not annotation["isBalanced"]:
            continue
        if not isinstance(record["text"], str):
            raise AnswerError(f"{NAME}: the answer to question {qid!r} is not a string")
        correct = float(prediction(record["text"]) == annotation["answer"])
        accuracy.append(correct)
        types = annotation.get("types") or {}
        if "structural" in types:
            per_structural[types["structural"]].append(correct)
            by_answer_type["open" if types["structural"] == "query" else "binary"].append(correct)
        if "semantic" in types:
            per_semantic[types["semantic"]].append(correct)
    return {
        "accuracy": _percent(accuracy),
        "binary": _percent(by_answer_type["binary"]),
        "open": _percent(by_answer_type["open"]),
        "per_structural_type": {kind: _percent(values) for kind, values in sorted(per_structural.items())},
        "per_semantic_type": {kind: _percent(values) for kind, values in sorted(per_semantic.items())},
        "questions": len(items),
        "answered": len(items) - len(missing),
        "missing": len(missing),
        "scored": len(accuracy),
    }


def majority_answers(questions: list[Question], data_root: Path) -> None:
    """None: GQA's answers are an open set, so there is no closed-set most-frequent-answer baseline."""
    return None
