"""The embedded dataset: a deterministic, generated world of coloured shapes (nothing is downloaded).

`generate(out_dir, seed=0, size="demo", image_size=64)` writes images, LLaVA caption / instruct JSON,
ShareGPT chats, a pretraining corpus, closed-set eval questions and a manifest; see generate.py.
"""
from .generate import FORMAT, SIZES, SPLIT_FRACTIONS, SPLITS, VERSION, generate, split_scenes

TRAIN, VAL, TEST = SPLITS

__all__ = ["generate", "split_scenes", "SPLITS", "TRAIN", "VAL", "TEST", "SPLIT_FRACTIONS", "SIZES",
           "FORMAT", "VERSION"]
