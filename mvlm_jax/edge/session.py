"""`mvlm generate|chat --gguf MODEL.gguf [--mmproj MMPROJ.gguf]`: the same commands on exported files in
llama.cpp. Prompts are built as text from the same templates (generate/prompts.py) and tokenized by
llama.cpp's own vocabulary (what llama.cpp's CLI does), so only the GGUF files are needed. Tokens are chosen
by the JAX engine's own sampler (generate/sampling.py) with the same per-step keys, so a seed means the
same draw in both runtimes."""
from __future__ import annotations

import argparse
from typing import Iterator, Sequence, TextIO

import jax
import numpy as np

from mvlm_jax.edge.llamacpp import LlamaCppModel, prompt_segments
from mvlm_jax.generate.prompts import find_image
from mvlm_jax.generate.sampling import SamplingConfig, choose_tokens, step_keys
from mvlm_jax.generate.stream import stream_text


class LlamaCppTokenizer:
    """The GGUF vocabulary, with the decode() the streaming printer needs."""

    def __init__(self, runtime: LlamaCppModel) -> None:
        self.runtime = runtime

    def decode(self, ids: Sequence[int]) -> str:
        return self.runtime.llm.detokenize(list(ids)).decode("utf-8", errors="replace")


@jax.jit
def _choose(logits: jax.Array, seed: jax.Array, step: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """logits [vocab] -> the token the JAX engine would choose for a one-row batch at generation `step`."""
    return choose_tokens(logits[None], step_keys(jax.random.key(seed), step, 1), temperature, top_p)[0]


class LlamaCppSession:
    """Loaded GGUF files, an optional RGB image, and the sampling settings."""

    def __init__(self, args: argparse.Namespace):
        from data_pipelines.images import load_image

        if args.image is not None and args.mmproj is None:
            raise ValueError("--image needs --mmproj (the mmproj-*.gguf written beside the model)")
        image = find_image(args.image) if args.image is not None else None
        self.runtime = LlamaCppModel(args.gguf, args.mmproj, n_ctx=args.max_len or 0)  # 0: the trained context
        self.tokenizer = LlamaCppTokenizer(self.runtime)
        # opened as the official code opens images (transparency dropped, not composited)
        self.image = np.asarray(load_image(image, composite_alpha=False)) if image is not None else None
        self.sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
        self.eos_ids = (self.runtime.llm.token_eos(),)

    def tokens(self, text: str) -> Iterator[int]:
        logits = self.runtime.prefill(prompt_segments(self.runtime, text, self.image))
        knobs = [np.float32(self.sampling.temperature), np.float32(self.sampling.top_p)]
        for step in range(self.sampling.max_new_tokens):
            token = int(_choose(np.asarray(logits, np.float32), self.sampling.seed, step, *knobs))
            yield token
            if token in self.eos_ids:
                return
            self.runtime.llm.eval([token])
            logits = self.runtime.next_logits()

    def answer(self, text: str, out: TextIO | None = None) -> str:
        if out is None:
            ids = [t for t in self.tokens(text) if t not in self.eos_ids]
            return self.tokenizer.decode(ids)
        return stream_text(self.tokenizer, self.tokens(text), self.eos_ids, out)
