"""Tiny but complete ScienceQA, MME and MMBench trees in the official formats (MobileVLM's benchmark_data
layout), with small real non-square images, for the scorer tests and the end-to-end runs.

write_sqa:     6 test questions (4 with an image, 2 without; 2-5 choices; subjects with a clear and a tied
               majority) + 2 train problems that are in problems.json but not in the question file.
write_mme:     10 questions, 5 images: existence (2 images) and artwork (answers in questions_answers_YN/) for
               Perception, code_reasoning (an answer line with the double-space wording) and
               commonsense_reasoning for Cognition.
write_mmbench: 9 rows, 3 questions with their rotated copies (index >= 1,000,000): one with a hint and 4
               options, one with an empty hint and 2 options, one with hint "nan" and 3 options (D "nan").
Deterministic: same bytes on every call.
"""
from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw


def image_bytes(size: tuple[int, int], color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    """A small non-square RGB image: a coloured field with a white rectangle in its upper left."""
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).rectangle([1, 1, size[0] // 2, size[1] // 3], fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")


# ---------------------------------------------------------------- ScienceQA
# (id, image size or None, subject, context, question, choices, answer index)
SQA_TEST = [
    ("4", None, "language science", "", "Which figure of speech is used in this text?\nSing, O goddess, the anger "
     "of Achilles son of Peleus.\n\u2014Homer, The Iliad", ["chiasmus", "apostrophe"], 1),
    ("5", (40, 28), "natural science", "A parachute is tested in a wind tunnel.",
     "Which of the following could the test show?", ["if it was damaged", "how steady it was", "its colour"], 1),
    ("11", (24, 36), "natural science", "", "Which animal's feet are also adapted for swimming?",
     ["lynx", "camel", "duck", "goat"], 2),
    ("15", None, "language science", "", "Would you find the word dozen on a dictionary page with the following "
     "guide words?\ndaddy - definition", ["no", "yes"], 1),
    ("22", (30, 20), "social science", "The map shows five states.", "Which state is farthest north?",
     ["Utah", "Ohio", "Iowa", "Maine", "Alaska"], 4),
    ("23", (36, 24), "social science", "", "Which of these states is farthest east?", ["Maine", "Idaho"], 0),
]
SQA_TRAIN = [("1", "Which word is a noun?", ["run", "dog"], 1), ("2", "Which is a solid?", ["ice", "steam"], 0)]
SQA_COLORS = [(200, 40, 40), (40, 160, 60), (30, 60, 200), (180, 150, 20)]


def sqa_value(context: str, question: str, choices: list[str], image: bool) -> str:
    """The human turn of LLaVA's CQM-A question file."""
    body = (f"Context: {context}\n" if context else "") + question + "".join(
        f"\n{'ABCDE'[i]}. {choice}" for i, choice in enumerate(choices))
    return ("<image>\n" if image else "") + body


def write_sqa(data_root: Path) -> None:
    root = Path(data_root) / "sqa"
    items, problems, colors = [], {}, iter(SQA_COLORS)
    for pid, size, subject, context, question, choices, answer in SQA_TEST:
        item = {"id": pid}
        if size:
            item["image"] = f"{pid}/image.png"
            _write(root / "images" / "test" / pid / "image.png", image_bytes(size, next(colors)))
        item["conversations"] = [{"from": "human", "value": sqa_value(context, question, choices, bool(size))},
                                 {"from": "gpt", "value": "ABCDE"[answer]}]
        items.append(item)
        problems[pid] = {"question": question, "choices": choices, "answer": answer, "hint": context,
                         "image": "image.png" if size else None, "task": "closed choice", "grade": "grade4",
                         "subject": subject, "topic": "topic", "category": "category", "skill": "skill",
                         "lecture": "", "solution": "", "split": "test"}
    for pid, question, choices, answer in SQA_TRAIN:
        problems[pid] = {"question": question, "choices": choices, "answer": answer, "hint": "", "image": None,
                         "task": "closed choice", "grade": "grade2", "subject": "language science",
                         "topic": "topic", "category": "category", "skill": "skill", "lecture": "",
                         "solution": "", "split": "train"}
    _write(root / "llava_test_CQM-A.json", json.dumps(items, indent=2))
    _write(root / "problems.json", json.dumps(problems, indent=2))
    _write(root / "pid_splits.json", json.dumps({"train": [p[0] for p in SQA_TRAIN], "val": [],
                                                  "test": [p[0] for p in SQA_TEST]}))


# ---------------------------------------------------------------- MME
LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."
# (question_id = image path under MME_Benchmark_release_version, size, [(question, answer), (question, answer)])
MME_IMAGES = [
    ("existence/000000000001.jpg", (40, 28), [("Is there a dog in this image?", "Yes"),
                                              ("Is there a cat in this image?", "No")]),
    ("existence/000000000002.jpg", (28, 40), [("Is there a car in this image?", "No"),
                                              ("Is there a tree in this image?", "Yes")]),
    ("artwork/images/10002.jpg", (36, 24), [("Is this artwork created by Monet?", "Yes"),
                                            ("Is this artwork created by Turner?", "No")]),
    ("code_reasoning/0020.png", (32, 20), [("Is a python code shown in the picture?", "Yes"),
                                           ("Is a c++ code shown in the picture?", "No")]),
    ("commonsense_reasoning/0065.png", (20, 30), [("Is it appropriate to wear a down jacket now?", "No"),
                                                  ("Is it appropriate to wear a T-shirt now?", "Yes")]),
]
MME_DOUBLE_SPACE = {"Is a python code shown in the picture?"}  # MME's file has "?  Please answer yes or no."


def write_mme(data_root: Path) -> None:
    images = Path(data_root) / "mme" / "images"  # the official tree links it to MME_Benchmark_release_version
    lines = []
    for number, (qid, size, pairs) in enumerate(MME_IMAGES):
        category = qid.split("/")[0]
        fmt = "JPEG" if qid.endswith(".jpg") else "PNG"
        _write(images / qid, image_bytes(size, (30 * number + 20, 90, 200 - 30 * number), fmt))
        folder = images / category / ("questions_answers_YN" if "/images/" in qid else "")
        answers = "".join(f"{q}{'  ' if q in MME_DOUBLE_SPACE else ' '}Please answer yes or no.\t{a}\n"
                          for q, a in pairs)
        _write(folder / (Path(qid).stem + ".txt"), answers)
        lines += [json.dumps({"question_id": qid, "image": qid, "text": q + LLAVA_SUFFIX, "category": category})
                  for q, _ in pairs]
    _write(Path(data_root) / "mme" / "llava_mme.jsonl", "\n".join(lines) + "\n")


# ---------------------------------------------------------------- MMBench
MMBENCH_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                  "l2-category", "comment", "split"]
# (index, hint, question, [A, B, C, D], answer, category, l2-category, image size, image format)
_SCENE = ("image_scene", "coarse_perception", (40, 28), "JPEG")
_PLACE = ("object_localization", "fine-grained_perception (instance)", (24, 36), "PNG")
_COUNT = ("object_localization", "fine-grained_perception (instance)", (32, 20), "PNG")
MMBENCH_ROWS = [
    (0, "The picture was taken in a park.", "What is the main object in the image?",
     ["a teddy bear", "a rabbit", "a cat", "a dog"], "B", *_SCENE),
    (1, "", "Which corner is the white square in?", ["top left", "bottom right", "", ""], "A", *_PLACE),
    (2, "nan", "How many circles are there?", ["1", "2", "3", "nan"], "C", *_COUNT),
    (1000000, "The picture was taken in a park.", "What is the main object in the image?",
     ["a rabbit", "a cat", "a dog", "a teddy bear"], "A", *_SCENE),
    (1000001, "", "Which corner is the white square in?", ["bottom right", "top left", "", ""], "B", *_PLACE),
    (1000002, "nan", "How many circles are there?", ["2", "3", "1", "nan"], "B", *_COUNT),
    (2000000, "The picture was taken in a park.", "What is the main object in the image?",
     ["a cat", "a dog", "a teddy bear", "a rabbit"], "D", *_SCENE),
    (2000002, "nan", "How many circles are there?", ["3", "1", "2", "nan"], "A", *_COUNT),
    (3000000, "The picture was taken in a park.", "What is the main object in the image?",
     ["a dog", "a teddy bear", "a rabbit", "a cat"], "C", *_SCENE),
]


def mmbench_image(index: int) -> bytes:
    """The encoded image of a row (a copy has its original's image, as in the official TSV)."""
    row = next(r for r in MMBENCH_ROWS if r[0] == index % 1_000_000)
    return image_bytes(row[7], (60 + 50 * row[0], 120, 90), row[8])


def write_mmbench(data_root: Path) -> None:
    path = Path(data_root) / "mmbench" / "mmbench_dev_en_20231003.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(MMBENCH_HEADER)
        for index, hint, question, opts, answer, category, l2, _, _ in MMBENCH_ROWS:
            image = base64.b64encode(mmbench_image(index)).decode("ascii")
            writer.writerow([index, question, hint, *opts, answer, category, image, "fixture", l2, "", "dev"])
