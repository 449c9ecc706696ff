"""`mvlm generate|chat --gguf MODEL.gguf [--mmproj MMPROJ.gguf]`: the same commands on exported files in
llama.cpp. Prompts are built as text from the same templates and tokenized by llama.cpp's own vocabulary
(what llama.cpp's CLI does), so only the GGUF files are needed; sampling follows the same SamplingConfig
(greedy at temperature 0, else temperature + top-p with a seeded numpy generator)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator, Sequence, TextIO

import numpy as np

from data_pipelines.templates import IMAGE_PLACEHOLDER, vicuna_v1_segments
from mvlm_jax.generate.sampling import SamplingConfig


class LlamaCppTokenizer:
    """The GGUF vocabulary, with the decode() the streaming printer needs."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime

    def encode(self, text: str, bos: bool) -> list[int]:
        return self.runtime.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=True)

    def decode(self, ids: Sequence[int]) -> str:
        return self.runtime.llm.detokenize(list(ids)).decode("utf-8", errors="replace")


def prompt_text(turns: Sequence[dict], template: str, has_image: bool) -> str:
    """The prompt as text, "<image>" where the image goes."""
    if template == "vicuna_v1":
        return "".join(s.text for s in vicuna_v1_segments(turns, has_image, generation_prompt=True))
    text = turns[-1]["value"]
    return text if not has_image or IMAGE_PLACEHOLDER in text else IMAGE_PLACEHOLDER + text


def sample(logits: np.ndarray, sampling: SamplingConfig, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; else softmax(logits / T) restricted to the top-p nucleus."""
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    scaled = (logits - logits.max()) / sampling.temperature
    probs = np.exp(scaled) / np.exp(scaled).sum()
    order = np.argsort(-probs)
    keep = np.cumsum(probs[order]) - probs[order] < sampling.top_p
    keep[0] = True  # the most likely token always stays (top_p 0 is greedy), as in the JAX sampler
    kept = order[keep]
    return int(rng.choice(kept, p=probs[kept] / probs[kept].sum()))


class LlamaCppSession:
    """Loaded GGUF files, an optional RGB image, and the sampling settings."""

    def __init__(self, args: argparse.Namespace):
        from PIL import Image

        from mvlm_jax.edge.llamacpp import LlamaCppModel

        if args.image is not None and args.mmproj is None:
            raise ValueError("--image needs --mmproj (the mmproj-*.gguf written beside the model)")
        if args.image is not None and not Path(args.image).is_file():
            raise FileNotFoundError(f"{args.image}: image file not found")
        self.runtime = LlamaCppModel(args.gguf, args.mmproj, n_ctx=args.max_len or 0)  # 0: the trained context
        self.tokenizer = LlamaCppTokenizer(self.runtime)
        self.image = np.asarray(Image.open(args.image).convert("RGB")) if args.image is not None else None
        self.sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
        self.eos_ids = (self.runtime.llm.token_eos(),)

    def segments(self, text: str) -> list:
        before, marker, after = text.partition(IMAGE_PLACEHOLDER)
        if not marker or self.image is None:  # without an image "<image>" is plain text
            return [self.tokenizer.encode(text, bos=True)]
        return [self.tokenizer.encode(before, bos=True), self.image, self.tokenizer.encode(after, bos=False)]

    def tokens(self, text: str) -> Iterator[int]:
        rng = np.random.default_rng(self.sampling.seed)
        logits = self.runtime.prefill(self.segments(text))
        for _ in range(self.sampling.max_new_tokens):
            token = sample(np.asarray(logits, np.float64), self.sampling, rng)
            yield token
            if token in self.eos_ids:
                return
            self.runtime.llm.eval([token])
            logits = self.runtime.next_logits()

    def answer(self, text: str, out: TextIO | None = None) -> str:
        from mvlm_jax.generate.cli import stream_text

        if out is None:
            ids = [t for t in self.tokens(text) if t not in self.eos_ids]
            return self.tokenizer.decode(ids)
        return stream_text(self.tokenizer, self.tokens(text), self.eos_ids, out)
