"""The embedded dataset made ready to train on: generated world, a tokenizer trained on its corpus, and
token shards of its corpus. Every step is skipped when its output is already complete."""
from __future__ import annotations

import json
import os
from pathlib import Path

from data_pipelines.embedded.generate import generate
from data_pipelines.shards import INDEX_FILE, write_shards
from data_pipelines.tokenizer import Tokenizer, train_tokenizer


def prepare(root: str | os.PathLike, size: str = "tiny", vocab_size: int = 512, image_size: int = 64,
            seed: int = 0) -> dict[str, str]:
    """Paths: world, tokenizer, shards (train split), and the SFT / LLaVA files of the train split."""
    root = Path(root).absolute()
    world = root / "world"
    generate(world, seed=seed, size=size, image_size=image_size)
    tokenizer_path = root / f"tok{vocab_size}.model"
    if not tokenizer_path.is_file():
        texts = [json.loads(line)["text"] for line in (world / "corpus_train.jsonl").read_text().splitlines()]
        for name in ("sharegpt_train.json", "llava_instruct_train.json", "llava_caption_train.json"):
            for record in json.loads((world / name).read_text()):
                texts += [turn["value"] for turn in record["conversations"]]
        train_tokenizer(texts, vocab_size, tokenizer_path)
    shards = root / f"shards{vocab_size}"
    if not (shards / INDEX_FILE).is_file():
        write_shards([str(world / "corpus_train.jsonl")], Tokenizer(tokenizer_path), shards, workers=1, progress=False)
    return {"world": str(world), "tokenizer": str(tokenizer_path), "shards": str(shards),
            "sharegpt": str(world / "sharegpt_train.json"), "llava_caption": str(world / "llava_caption_train.json"),
            "llava_instruct": str(world / "llava_instruct_train.json"), "images": str(world / "images")}
