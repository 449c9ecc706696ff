"""TextVQA (val v0.5.1, 5,000 questions): the official prompts, with OCR tokens, and the official accuracy.

Generator: MobileVLM mobilevlm/eval/model_vqa_loader.py over LLaVA's `llava_textvqa_val_v051_ocr.jsonl`,
whose text is "{question}\\nReference OCR token: {tok1, tok2, ...}\\nAnswer the question using a single word
or phrase." (Rosetta OCR tokens; 115 lines have none); the val images live in `train_images`.
Scorer: LLaVA llava/eval/eval_textvqa.py with m4c_evaluator.TextVQAAccuracyEvaluator (see
textvqa_answers.py): the question is recovered from the record's prompt, lower-cased, and looked up with the
record's question_id (which is the TextVQA image_id) in `TextVQA_0.5.1_val.json`; the prediction scores the
leave-one-out soft accuracy over the 10 human answers.

Ids: question_id is the image id, and an image can carry several questions, so a record is identified by
(question_id, prompt) (Question.key); a duplicate is the same id with the same prompt.
Missing answers: eval_textvqa.py averages over the records the file holds (it prints "Samples: N"), so a
partial file would get a score over a subset; here a missing answer is an AnswerError naming it instead.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from mvlm_jax.eval.benchmark import AnswerError, Question
from mvlm_jax.eval.loader_format import loader_questions, require
from mvlm_jax.eval.records import match_records
from mvlm_jax.eval.textvqa_answers import GT_ANSWERS, soft_accuracy

NAME = "textvqa"
MAX_NEW_TOKENS = 128  # hard-coded in mobilevlm/eval/model_vqa_loader.py
SCORE_KEYS = ("accuracy",)

QUESTION_FILE = "textvqa/llava_textvqa_val_v051_ocr.jsonl"
ANNOTATION_FILE = "textvqa/TextVQA_0.5.1_val.json"
IMAGE_DIR = "textvqa/train_images"
OCR_LINE = "Reference OCR token: "


def required_files(data_root: Path) -> dict[Path, str]:
    """The files the generator and the scorer read, each with what belongs there."""
    root = Path(data_root)
    return {
        root / QUESTION_FILE: "LLaVA's TextVQA val question file with OCR tokens (jsonl: question_id = image id, "
                              "image, text, category; 5,000 lines)",
        root / ANNOTATION_FILE: "the official TextVQA 0.5.1 val annotations ({\"data\": [{image_id, question, "
                                "answers (10), ...}]})",
        root / IMAGE_DIR: "the TextVQA train_images folder (it holds the val images too)",
    }


def questions(data_root: Path) -> list[Question]:
    """Every TextVQA question in file order; question_id (a string) repeats for questions on one image.
    category is the file's ("default"): TextVQA has no question types."""
    root = Path(data_root)
    question_file = root / QUESTION_FILE
    return loader_questions(question_file, root / IMAGE_DIR, NAME, required_files(root)[question_file])


def question_of_prompt(prompt: str) -> str:
    """The question inside a record's prompt, lower-cased, as eval_textvqa.py's prompt_processor finds it:
    after "OCR tokens: " the text between "Question: " and " Short answer:"; with a "Reference OCR token: "
    line and exactly 3 lines, line 0 (line 1 when the prompt starts with the OCR line); with 2 lines, line 0.
    ValueError for any other prompt (the official script asserts)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        found = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if found is None:
            raise ValueError(f"no 'Question: ... Short answer:' in the prompt {prompt!r}")
        question = found.group(1)
    elif OCR_LINE in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith(OCR_LINE.rstrip()) else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"cannot find the question in the prompt {prompt!r}: eval_textvqa.py expects "
                         f"2 lines, or 3 with a '{OCR_LINE}' line")
    return question.lower()


def _annotations(path: Path) -> dict[tuple[str, str], list[str]]:
    """(image_id, question.lower()) -> the human answers; the last one wins on a repeat, as in the official
    dict."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path}: expected a JSON object with a 'data' list (TextVQA 0.5.1 format)")
    answers = {}
    for index, item in enumerate(data["data"]):
        try:
            answers[(str(item["image_id"]), item["question"].lower())] = item["answers"]
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"{path}: data[{index}] lacks image_id, question or answers") from None
    return answers


def score(records: list[dict], data_root: Path, limit: int | None = None) -> dict:
    """The official TextVQA accuracy of answer records (covering the first `limit` questions; all by default).

    Returns {"accuracy" (percent), "questions", "answered", "missing" (always 0: a missing answer is an
    AnswerError)}. AnswerError naming the (question_id, prompt) of unknown, duplicate or missing records;
    ValueError naming the question when its prompt has no recoverable question, the annotations lack it, or
    it does not have exactly 10 human answers.
    """
    root = Path(data_root)
    items = questions(root)[:limit]
    matched, missing = match_records(records, [question.key for question in items],
                                     key_of=lambda record: (str(record["question_id"]), record["prompt"]),
                                     benchmark=NAME, missing_ok=False)
    annotation_path = require(root / ANNOTATION_FILE, required_files(root)[root / ANNOTATION_FILE])
    annotations = _annotations(annotation_path)
    scores = []
    for question, record in zip(items, matched):
        image_id = str(question.question_id)
        try:
            key = (image_id, question_of_prompt(record["prompt"]))
        except ValueError as error:
            raise ValueError(f"{NAME}: question {image_id!r}: {error}") from None
        if key not in annotations:
            raise ValueError(f"{annotation_path}: no annotation for image_id {key[0]!r} with question {key[1]!r}")
        if len(annotations[key]) != GT_ANSWERS:
            raise ValueError(f"{annotation_path}: image_id {key[0]!r}, question {key[1]!r}: "
                             f"{len(annotations[key])} answers, the official scorer needs {GT_ANSWERS}")
        if not isinstance(record["text"], str):
            raise AnswerError(f"{NAME}: the answer to question {image_id!r} ({key[1]!r}) is not a string")
        scores.append(soft_accuracy(record["text"], annotations[key]))
    return {
        "accuracy": 100.0 * sum(scores) / len(scores) if scores else 0.0,
        "questions": len(items),
        "answered": len(items) - len(missing),
        "missing": len(missing),
    }


def majority_answers(questions: list[Question], data_root: Path) -> None:
    """None: TextVQA's answers are open text (mostly copied from the image), so there is no closed-set
    most-frequent-answer baseline."""
    return None
