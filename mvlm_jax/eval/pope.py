"""POPE (COCO; adversarial 3,000 / popular 3,000 / random 2,910 questions): prompts and official metrics.

Generator: MobileVLM mobilevlm/eval/model_vqa_loader.py over LLaVA's `llava_pope_test.jsonl` (integer
question ids; category = the split; text = "Is there a {object} in the image?" + the suffix "\\nAnswer the
question using a single word or phrase."), images from COCO val2014.
Scorer: LLaVA llava/eval/eval_pope.py, run by MobileVLM's scripts/benchmark/pope.sh:
  - the labels of split S are the "label" of each line of `coco/coco_pope_S.json` (jsonl despite the name;
    "no" is negative, anything else positive), from POPE at commit e3e3926 (random: 2,910 lines);
  - an answer is parsed as "no" when 'No', 'not' or 'no' is one of the words of its text before the first
    '.', with commas removed, split on single spaces; anything else is "yes" ("NO", "" and "Not sure" too);
  - the answers of split S, in answers-file order, are zipped with its labels BY POSITION.
So the records of each split must come in question-file order, complete: a missing record or a record out
of order is an AnswerError here (the official script would silently mis-pair them). The annotation files
are checked against the question file (same image and question at each position).
The official script divides by zero when TP+FP, TP+FN or precision+recall is 0 (e.g. no answer read as
yes); such a ratio is 0 here.
Aggregate: the MobileVLM paper does not say which number its POPE column is. LLaVA-1.5's POPE number is
the mean F1 of the three splits (haotian-liu/LLaVA#626); both mean_f1 and mean_accuracy are returned.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from mvlm_jax.eval.benchmark import AnswerError, Question
from mvlm_jax.eval.loader_format import loader_questions, require
from mvlm_jax.eval.records import json_lines, match_records

NAME = "pope"
MAX_NEW_TOKENS = 128  # hard-coded in mobilevlm/eval/model_vqa_loader.py
SCORE_KEYS = ("mean_f1", "mean_accuracy")
SPLITS = ("adversarial", "popular", "random")

QUESTION_FILE = "pope/llava_pope_test.jsonl"
ANNOTATION_DIR = "pope/coco"
IMAGE_DIR = "pope/val2014"
NO_WORDS = frozenset({"No", "not", "no"})


def annotation_file(data_root: Path, split: str) -> Path:
    return Path(data_root) / ANNOTATION_DIR / f"coco_pope_{split}.json"


def required_files(data_root: Path) -> dict[Path, str]:
    """The files the generator and the scorer read, each with what belongs there."""
    root = Path(data_root)
    files = {root / QUESTION_FILE: "LLaVA's POPE question file (jsonl: integer question_id, image, text, "
                                   "category = adversarial/popular/random; 8,910 lines)"}
    for split in SPLITS:
        files[annotation_file(root, split)] = (f"POPE's output/coco/coco_pope_{split}.json at commit e3e3926 "
                                               f"(jsonl: question_id, image, text, label yes/no)")
    files[root / IMAGE_DIR] = "the COCO val2014 images folder (COCO_val2014_000000310196.jpg, ...)"
    return files


def questions(data_root: Path) -> list[Question]:
    """Every POPE question in file order (LLaVA's file: adversarial, random, popular); question_id an int,
    category the split. ValueError naming the file and line of a category that is not a split."""
    root = Path(data_root)
    question_file = root / QUESTION_FILE
    return loader_questions(question_file, root / IMAGE_DIR, NAME, required_files(root)[question_file],
                            categories=SPLITS)


def parse_answer(text: str) -> str:
    """eval_pope.py's yes/no reading of an answer: "no" iff 'No', 'not' or 'no' is a word of the text before
    the first '.', commas removed, split on ' '; otherwise "yes"."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if NO_WORDS.intersection(words) else "yes"


def metrics(predictions: list[str], labels: list[str]) -> dict:
    """Accuracy, precision, recall, F1 and yes ratio (percent) plus TP/FP/TN/FN of "yes"/"no" predictions
    against labels ("no" is negative, anything else positive, as in eval_pope.py); 0 where a ratio is 0/0."""
    pairs = [(prediction != "no", label != "no") for prediction, label in zip(predictions, labels, strict=True)]
    tp = sum(1 for predicted, actual in pairs if predicted and actual)
    fp = sum(1 for predicted, actual in pairs if predicted and not actual)
    tn = sum(1 for predicted, actual in pairs if not predicted and not actual)
    fn = sum(1 for predicted, actual in pairs if not predicted and actual)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    count = len(pairs)
    return {"accuracy": 100.0 * (tp + tn) / count if count else 0.0, "precision": 100.0 * precision,
            "recall": 100.0 * recall, "f1": 100.0 * f1, "yes_ratio": 100.0 * (tp + fp) / count if count else 0.0,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn, "questions": count}


def _read_annotations(path: Path) -> list[dict]:
    """The lines of a coco_pope_<split>.json file; ValueError naming the file and line of a bad one."""
    lines = []
    for number, item in json_lines(path):
        if "label" not in item:
            raise ValueError(f"{path}:{number}: expected a JSON object with a 'label'")
        lines.append(item)
    return lines


def split_labels(data_root: Path, split: str, split_questions: list[Question]) -> list[str]:
    """The labels of `split`, one per question of the split in order, after checking that the annotation
    file pairs with the question file position by position (same image, same question before the suffix);
    ValueError naming the file and line where it does not (another POPE version pairs wrongly)."""
    path = annotation_file(data_root, split)
    lines = _read_annotations(require(path, required_files(data_root)[path]))
    hint = ("eval_pope.py pairs answers with labels by position; LLaVA's question file matches POPE's "
            "output/coco at commit e3e3926 (random: 2,910 lines)")
    if len(lines) != len(split_questions):
        raise ValueError(f"{path}: {len(lines)} labels for {len(split_questions)} {split} questions in "
                         f"{Path(data_root) / QUESTION_FILE}; {hint}")
    for number, (item, question) in enumerate(zip(lines, split_questions), 1):
        asked = question.text.split("\n")[0]  # the question file's text is the annotation's plus the suffix
        same_image = "image" not in item or question.image_path.name == item["image"]
        if not (same_image and item.get("text", asked) == asked):
            raise ValueError(f"{path}: label {number} ({item.get('image')}, {item.get('text')!r}) is not about "
                             f"question {question.question_id!r} ({question.image_path.name}, {asked!r}); {hint}")
    return [str(item["label"]) for item in lines]


def _by_split(items: list[Question]) -> dict[str, list[Question]]:
    """The questions of each split that has any, in order."""
    groups: dict[str, list[Question]] = {}
    for question in items:
        groups.setdefault(question.category, []).append(question)
    return {split: groups[split] for split in SPLITS if split in groups}


def _check_order(records: list[dict], split_questions: list[Question], split: str) -> None:
    """AnswerError unless the split's records, in file order, are in question-file order."""
    expected = [str(question.question_id) for question in split_questions]
    wanted = set(expected)
    found = [str(record["question_id"]) for record in records if str(record["question_id"]) in wanted]
    for position, (got, want) in enumerate(zip(found, expected)):
        if got != want:
            raise AnswerError(f"{NAME}: the {split} answers are not in question-file order: answer {position + 1} "
                              f"of the split is for question {got}, expected {want}; eval_pope.py pairs answers "
                              f"with labels by position, so it would mis-score this file (write the records in "
                              f"question order)")


def score(records: list[dict], data_root: Path, limit: int | None = None) -> dict:
    """The official POPE metrics of answer records (covering the first `limit` questions of the file; all by
    default: then a split may be covered in part, and is scored against the first labels of its file).

    Returns {split: {"accuracy", "precision", "recall", "f1", "yes_ratio" (percent), "tp", "fp", "tn", "fn",
    "questions"} for each split in the question file, "mean_f1", "mean_accuracy" (percent, over those splits),
    "questions", "answered", "missing" (always 0)}. AnswerError naming unknown, duplicate or missing question
    ids, or the first record out of question order within a split.
    """
    root = Path(data_root)
    every = questions(root)
    items = every[:limit]
    complete_splits = _by_split(every)
    matched, missing = match_records(records, [str(question.question_id) for question in items],
                                     key_of=lambda record: str(record["question_id"]), benchmark=NAME,
                                     missing_ok=False)
    answer_of = {str(question.question_id): record for question, record in zip(items, matched)}
    result: dict = {}
    for split, split_questions in _by_split(items).items():
        _check_order(records, split_questions, split)
        labels = split_labels(root, split, complete_splits[split])[:len(split_questions)]
        texts = [answer_of[str(question.question_id)]["text"] for question in split_questions]
        bad = [str(q.question_id) for q, text in zip(split_questions, texts) if not isinstance(text, str)]
        if bad:
            raise AnswerError(f"{NAME}: the answers to questions {', '.join(bad[:10])} are not strings")
        result[split] = metrics([parse_answer(text) for text in texts], labels)
    splits = list(result.values())
    result["mean_f1"] = sum(value["f1"] for value in splits) / len(splits) if splits else 0.0
    result["mean_accuracy"] = sum(value["accuracy"] for value in splits) / len(splits) if splits else 0.0
    result.update(questions=len(items), answered=len(items) - len(missing), missing=len(missing))
    return result


def majority_answers(questions: list[Question], data_root: Path) -> list[str]:
    """Per question, the most frequent label of its split's annotation file ("yes" or "no"; a tie, as in the
    1,500/1,500 adversarial and popular splits, gives "yes": the scorer's default reading, and the one whose
    precision is defined)."""
    majority = {}
    for split in {question.category for question in questions}:
        path = annotation_file(data_root, split)
        require(path, required_files(data_root)[path])
        counts = Counter("no" if str(item["label"]) == "no" else "yes" for item in _read_annotations(path))
        majority[split] = "no" if counts["no"] > counts["yes"] else "yes"
    return [majority[question.category] for question in questions]
