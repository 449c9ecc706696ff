"""Tiny but complete GQA, TextVQA and POPE trees in the official benchmark_data layout, images included.

Each writer puts under `data_root` the question file, the annotation file(s) and small JPEG images (non-square,
one colour each), in the formats of LLaVA's playground/data/eval question files, the official GQA
testdev_balanced_questions.json, TextVQA_0.5.1_val.json and POPE's output/coco/coco_pope_<split>.json. The
contents are deterministic and chosen to hit the scorers' quirks (see the answers below).
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

SUFFIX = "\nAnswer the question using a single word or phrase."
IMAGE_SIZES = ((40, 28), (24, 36))  # (width, height): one landscape, one portrait
COLOURS = ((200, 30, 30), (30, 160, 60), (40, 60, 210), (230, 200, 40), (120, 40, 160), (20, 170, 170))


def _image(path: Path, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", IMAGE_SIZES[index % 2], COLOURS[index % len(COLOURS)]).save(path, format="JPEG", quality=95)


def _jsonl(path: Path, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")


# --- GQA: (question_id, image id, question, answer, isBalanced, structural type, semantic type)
GQA_QUESTIONS = (
    ("201307251", "n161313", "Is it overcast?", "no", True, "verify", "global"),
    ("201640614", "n235859", "Who is wearing the dress?", "woman", True, "query", "rel"),
    ("202225914", "n336443", "Does the utensil on top of the table look clean and black?", "no", True,
     "logical", "attr"),
    ("20968379", "n336443", "What color is the table?", "brown", True, "query", "attr"),
    ("201885000", "2354786", "Which side is the cup on?", "right", False, "query", "rel"),  # not balanced
    ("20602279", "2354786", "Is the car to the left or right of the man?", "left", True, "choose", "rel"),
)
GQA_EXTRA_ANNOTATION = ("209999999", "n161313", "Is the sky blue?", "yes", True, "verify", "attr")


def write_gqa(data_root: Path) -> None:
    """gqa/llava_gqa_testdev_balanced.jsonl (6 questions, string ids, one not balanced),
    gqa/testdev_balanced_questions.json (those 6 plus one the question file does not ask) and gqa/images."""
    root = Path(data_root) / "gqa"
    _jsonl(root / "llava_gqa_testdev_balanced.jsonl", [
        {"question_id": qid, "image": f"{image}.jpg", "text": question + SUFFIX, "category": "default"}
        for qid, image, question, *_ in GQA_QUESTIONS])
    annotations = {}
    for qid, image, question, answer, balanced, structural, semantic in GQA_QUESTIONS + (GQA_EXTRA_ANNOTATION,):
        annotations[qid] = {
            "semantic": [{"operation": "select", "dependencies": [], "argument": "scene"}],
            "entailed": [], "equivalent": [qid], "question": question, "imageId": image, "isBalanced": balanced,
            "groups": {"global": None, "local": None}, "answer": answer,
            "semanticStr": "select: scene", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"detailed": structural, "semantic": semantic, "structural": structural},
            "fullAnswer": f"The answer is {answer}."}
    (root / "testdev_balanced_questions.json").write_text(json.dumps(annotations), encoding="utf-8")
    for index, image in enumerate(dict.fromkeys(image for _, image, *_ in GQA_QUESTIONS)):
        _image(root / "images" / f"{image}.jpg", index)


# --- TextVQA: (image id, question as in the question file, question as in the annotations, OCR tokens,
# the 10 human answers). Two questions share an image id; one has no OCR tokens; one differs in case.
TEXTVQA_QUESTIONS = (
    ("003a8ae2ef43b901", "what is the brand of this camera?", "what is the brand of this camera?",
     ["DAKOTA", "DIGITAL", "Single-Use", "Camera"],
     ["dakota", "dakota digital", "dakota", "dakota", "Dakota Digital", "dakota digital", "dakota",
      "dakota digital.", "dakota", "digital"]),
    ("b9dc400eb20bad64", "how many bottles are there?", "how many bottles are there?", [],
     ["two", "2", "2.", "two", "2", "3", "two", "2", "2", "three"]),
    ("b9dc400eb20bad64", "what does the sign say?", "what does the sign say?", ["DONT", "WALK"],
     ["dont walk", "don't walk", "Don't Walk", "dont walk", "walk", "don't walk!", "do not walk", "dont walk",
      "don't walk", "stop"]),
    ("2b538a43dd933fc1", "what is the price?", "what is the price?", ["$1,000", "SALE"],
     ["$1,000", "1000", "1,000", "$1000", "1000.00", "1000", "1,000.", "one thousand", "1000", "$1,000"]),
    ("7f4b2e9c1a0d3e55", "whose phone is this?", "whose phone is this?", ["JOHN'S"],
     ["john's", "johns", "john's", "john 's", "John's.", "john", "john's", "it's john's", "john's", "johns"]),
    ("0a1b2c3d4e5f6789", "What Brand is the Soda?", "what brand is the soda?", ["Coca-Cola", "Classic"],
     ["coca-cola", "coca cola", "Coca-Cola", "coca-cola", "coke", "coca - cola", "coca-cola", "the coca cola",
      "coca-cola", "pepsi"]),
)


def textvqa_text(question: str, tokens: list[str]) -> str:
    """A line's text as in LLaVA's llava_textvqa_val_v051_ocr.jsonl."""
    return f"{question}\nReference OCR token: {', '.join(tokens)}{SUFFIX}"


def write_textvqa(data_root: Path) -> None:
    """textvqa/llava_textvqa_val_v051_ocr.jsonl (6 questions on 5 images), textvqa/TextVQA_0.5.1_val.json and
    textvqa/train_images."""
    root = Path(data_root) / "textvqa"
    _jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": image, "image": f"{image}.jpg", "text": textvqa_text(question, tokens),
         "category": "default"} for image, question, _, tokens, _ in TEXTVQA_QUESTIONS])
    data = [{"question": annotated, "image_id": image, "image_classes": ["Poster"], "flickr_original_url": "",
             "flickr_300k_url": "", "image_width": 1024, "image_height": 768, "answers": answers,
             "question_tokens": annotated.rstrip("?").split(), "question_id": 34602 + index, "set_name": "val"}
            for index, (image, _, annotated, _, answers) in enumerate(TEXTVQA_QUESTIONS)]
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps(
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}),
        encoding="utf-8")
    for index, image in enumerate(dict.fromkeys(image for image, *_ in TEXTVQA_QUESTIONS)):
        _image(root / "train_images" / f"{image}.jpg", index)


# --- POPE: per split, in LLaVA's file order (adversarial, random, popular), (COCO image id, object, label).
# Ids as in LLaVA's file: split offset + position (adversarial 1.., random 10000001.., popular 20000001..).
POPE_SPLITS = (
    ("adversarial", 0, ((310196, "snowboard", "yes"), (310196, "backpack", "no"), (8211, "motorcycle", "yes"),
                        (8211, "car", "no"))),
    ("random", 10000000, ((310196, "snowboard", "yes"), (310196, "person", "yes"), (8211, "zebra", "no"),
                          (8211, "chair", "yes"))),
    ("popular", 20000000, ((310196, "dining table", "no"), (310196, "snowboard", "yes"), (8211, "bench", "no"),
                           (8211, "cup", "no"))),
)


def pope_image(coco_id: int) -> str:
    return f"COCO_val2014_{coco_id:012d}.jpg"


def write_pope(data_root: Path) -> None:
    """pope/llava_pope_test.jsonl (4 questions per split, integer ids), pope/coco/coco_pope_{split}.json
    (2 yes/2 no, 3 yes/1 no, 1 yes/3 no) and pope/val2014."""
    root = Path(data_root) / "pope"
    lines = []
    for split, offset, items in POPE_SPLITS:
        labels = []
        for position, (coco_id, thing, label) in enumerate(items, 1):
            article = "an" if thing[0] in "aeiou" else "a"
            question = f"Is there {article} {thing} in the image?"
            image = pope_image(coco_id)
            lines.append({"question_id": offset + position, "image": image, "text": question + SUFFIX,
                          "category": split})
            labels.append({"question_id": position, "image": image, "text": question, "label": label})
        _jsonl(root / "coco" / f"coco_pope_{split}.json", labels)
    _jsonl(root / "llava_pope_test.jsonl", lines)
    coco_ids = dict.fromkeys(coco_id for _, _, items in POPE_SPLITS for coco_id, *_ in items)
    for index, coco_id in enumerate(coco_ids):
        _image(root / "val2014" / pope_image(coco_id), index)
