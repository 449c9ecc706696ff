"""The embedded dataset made ready to train on: generated world, a tokenizer trained on its corpus and its
conversations as their templates lay them out, and token shards of its corpus (train and held-out val
splits). Every step is skipped when its output is already complete."""
from __future__ import annotations

import json
import os
from pathlib import Path

from data_pipelines.embedded.generate import generate
from data_pipelines.shards import INDEX_FILE, write_shards
from data_pipelines.templates import SPECIALS, segments_for
from data_pipelines.tokenizer import Tokenizer, train_tokenizer


# The template each conversation file is trained with (experiments/sft.py, vlm.py): the tokenizer learns the
# text as the model reads it, as a tokenizer trained on chat data knows its chat template. The vicuna
# system prompt then takes 29 tokens instead of 101 (a quarter of a demo stage-2 conversation when only
# the turns were learnt), and each question-answer turn about 20 (docs/TRAINING.md).
TEMPLATE_OF = {"sharegpt": "vicuna_v1", "llava_instruct": "vicuna_v1", "llava_caption": "plain"}


def rendered(record: dict, template: str) -> str:
    """The conversation's text as `template` lays it out, one line per piece between special tokens."""
    text = "".join(s.text for s in segments_for(template, record["conversations"], "image" in record))
    for special in SPECIALS:
        text = text.replace(special, "\n")
    return text


def prepare(root: str | os.PathLike, size: str = "tiny", vocab_size: int = 512, image_size: int = 64,
            seed: int = 0) -> dict[str, str]:
    """Paths: world, tokenizer, shards (train split), the SFT / LLaVA files of the train split (sharegpt,
    llava_caption, llava_instruct, and `labels`: image classes for vision pretraining), and the held-out `val` split of each: shards_val, sharegpt_val, ...
    The tokenizer is trained on the train split only."""
    root = Path(root).absolute()
    world = root / "world"
    generate(world, seed=seed, size=size, image_size=image_size)
    tokenizer_path = root / f"tok{vocab_size}.model"
    if not tokenizer_path.is_file():
        texts = [json.loads(line)["text"] for line in (world / "corpus_train.jsonl").read_text().splitlines()]
        for name, template in TEMPLATE_OF.items():
            texts += [rendered(record, template) for record in json.loads((world / f"{name}_train.json").read_text())]
        train_tokenizer(texts, vocab_size, tokenizer_path)
    shards = root / f"shards{vocab_size}"
    held_out_shards = root / f"shards{vocab_size}_val"  # the validation loss's corpus (train.validation)
    for directory, corpus in ((shards, "corpus_train.jsonl"), (held_out_shards, "corpus_val.jsonl")):
        if not (directory / INDEX_FILE).is_file():
            write_shards([str(world / corpus)], Tokenizer(tokenizer_path), directory, workers=1, progress=False)
    names = ("sharegpt", "llava_caption", "llava_instruct", "labels")
    files = {f"{name}{suffix}": str(world / f"{name}_{split}.json")
             for name in names for split, suffix in (("train", ""), ("val", "_val"))}
    return {"world": str(world), "tokenizer": str(tokenizer_path), "shards": str(shards),
            "shards_val": str(held_out_shards), **files, "images": str(world / "images")}
