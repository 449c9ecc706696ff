"""The question format of MobileVLM's model_vqa_loader generator (GQA, TextVQA, POPE, MME): LLaVA's
playground/data/eval/*/llava_*.jsonl files, read in file order with errors naming the file and line."""
from __future__ import annotations

from pathlib import Path

from mvlm_jax.eval.benchmark import BenchmarkFileError, Question
from mvlm_jax.eval.records import json_lines

LOADER_KEYS = ("question_id", "image", "text")


def require(path: Path, what: str) -> Path:
    """`path` if it exists, else BenchmarkFileError naming it and what belongs there."""
    if not path.exists():
        raise BenchmarkFileError(f"{path}: missing; expected {what} (MobileVLM's benchmark_data layout)")
    return path


def loader_questions(question_file: Path, image_dir: Path, benchmark: str, what: str,
                     categories: tuple[str, ...] | None = None) -> list[Question]:
    """The questions of a model_vqa_loader question file, in file order.

    Format (LLaVA playground/data/eval/*/llava_*.jsonl): one JSON object a line with question_id (kept with
    its JSON type), image (a file name under `image_dir`), text (the user turn, suffix included) and an
    optional category. The official generator writes `text` as the record's prompt; every image is padded to
    a square. ValueError naming the file and line of a malformed or repeated line (a repeat has the same
    Question.key), or of a category not in `categories` (when given). `what` describes the file for the
    missing-file error.
    """
    require(question_file, what)
    questions, first_line = [], {}
    for number, item in json_lines(question_file):
        where = f"{question_file}:{number}"
        absent = [key for key in LOADER_KEYS if key not in item]
        if absent:
            raise ValueError(f"{where}: {benchmark} question without {', '.join(absent)} "
                             f"(expected {', '.join(LOADER_KEYS)}, category)")
        if not isinstance(item["text"], str) or not isinstance(item["image"], str):
            raise ValueError(f"{where}: text and image must be strings")
        question = Question(question_id=item["question_id"], text=item["text"], prompt=item["text"],
                            image_path=image_dir / item["image"], pad=True,
                            category=str(item.get("category", "default")))
        if categories is not None and question.category not in categories:
            raise ValueError(f"{where}: category {question.category!r}; expected one of "
                             f"{', '.join(categories)}")
        if question.key in first_line:
            raise ValueError(f"{where}: repeats the question of line {first_line[question.key]} "
                             f"(question_id {item['question_id']!r})")
        first_line[question.key] = number
        questions.append(question)
    return questions
