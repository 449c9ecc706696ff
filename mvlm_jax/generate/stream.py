"""Printing generated text as it grows, for JAX and llama.cpp sessions alike."""
from __future__ import annotations

from typing import Iterable, Protocol, Sequence, TextIO


class Decoder(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


def stream_text(tokenizer: Decoder, tokens: Iterable[int], eos_ids: Sequence[int], out: TextIO) -> str:
    """Write the decoded text of `tokens` to `out` as it grows (up to an EOS); returns the whole text."""
    ids: list[int] = []
    shown = ""
    for token in tokens:
        if token in eos_ids:
            break
        ids.append(token)
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd"):  # an incomplete UTF-8 sequence of byte pieces: wait for the rest
            out.write(text[len(shown):])
            out.flush()
            shown = text
    text = tokenizer.decode(ids)
    out.write(text[len(shown):])
    out.flush()
    return text
