"""The embedded world's held-out image questions (`make demo`), as one more benchmark.

Layout under the data root (what `mvlm data embedded --out DIR/world` and the demo write):
    world/eval_test.json    held-out questions: {id, image, type, question, answer, choices, chance}
    world/eval_train.json   the same kind of questions on training scenes: their answers give the
                            most-frequent-answer baseline (the most frequent training answer of each type)
    world/images/           the scenes (336 x 336 PNG in the demo)
Every question has a closed answer set (`choices`). Prompt: the question alone in the vicuna_v1 user turn,
image first, as the demo trains; greedy, at most 16 new tokens. Scoring: the answer, stripped of a final
period and lower-cased, equals the gold answer. Scores (percent): accuracy, per type, and the mean chance
(1 / number of choices).
"""
from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Sequence

from mvlm_jax.eval.benchmark import Question
from mvlm_jax.eval.records import match_records

NAME = "demo_world"
MAX_NEW_TOKENS = 16
SCORE_KEYS = ("accuracy",)
SPLIT = "test"


def required_files(data_root: Path) -> dict[Path, str]:
    world = Path(data_root) / "world"
    return {world / f"eval_{SPLIT}.json": "the held-out questions of the embedded world (mvlm data embedded)",
            world / "eval_train.json": "questions on the training scenes (for the most-frequent-answer baseline)",
            world / "images": "the embedded world's scene images"}


def _load(path: Path) -> list[dict]:
    items = json.loads(path.read_text())
    for index, item in enumerate(items):
        absent = {"id", "image", "type", "question", "answer"} - set(item)
        if absent:
            raise ValueError(f"{path}: item {index} has no {', '.join(sorted(absent))}")
    return items


def questions(data_root: Path) -> list[Question]:
    world = Path(data_root) / "world"
    return [Question(question_id=item["id"], text=item["question"], prompt=item["question"],
                     image_path=world / "images" / item["image"], category=item["type"])
            for item in _load(world / f"eval_{SPLIT}.json")]


def normalise(text: str) -> str:
    return text.strip().rstrip(".").strip().lower()


def score(records: Sequence[dict], data_root: Path, limit: int | None = None) -> dict:
    items = _load(Path(data_root) / "world" / f"eval_{SPLIT}.json")[:limit]
    matched, _ = match_records(records, [str(i["id"]) for i in items], lambda r: str(r["question_id"]), NAME,
                               missing_ok=False)
    by_type: dict[str, list[bool]] = collections.defaultdict(list)
    for item, record in zip(items, matched):
        by_type[item["type"]].append(normalise(record["text"]) == normalise(item["answer"]))
    correct = [c for values in by_type.values() for c in values]
    return {"accuracy": 100.0 * sum(correct) / max(len(correct), 1),
            "per_type": {kind: 100.0 * sum(v) / len(v) for kind, v in sorted(by_type.items())},
            "chance": 100.0 * sum(i.get("chance", 0.0) for i in items) / max(len(items), 1),
            "questions": len(items), "missing": 0}


def majority_answers(questions_: Sequence[Question], data_root: Path) -> list[str]:
    """Per question, the most frequent training answer of its type (ties: the alphabetically first)."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for item in _load(Path(data_root) / "world" / "eval_train.json"):
        counts[item["type"]][normalise(item["answer"])] += 1
    def top(kind: str) -> str:
        if not counts[kind]:
            raise ValueError(f"eval_train.json has no question of type {kind!r}")
        return min(counts[kind].items(), key=lambda kv: (-kv[1], kv[0]))[0]
    return [top(q.category) for q in questions_]
