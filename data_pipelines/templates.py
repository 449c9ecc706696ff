"""Conversation templates (`vicuna_v1`, `plain`) to token ids plus a loss mask.

Tokenization follows the official pipeline (HF LlamaTokenizer, legacy mode, as MobileVLM trains): the
text is split at the special pieces `</s>` (-> EOS id) and `<image>` (-> IMAGE_TOKEN placeholder), each
chunk is encoded by SentencePiece on its own (so each gets the dummy "▁" prefix), and BOS starts the
sequence. The mask is built from SentencePiece's own piece offsets inside each chunk, not by re-tokenizing
rounds and counting (the official "-2" arithmetic, which silently masks a whole sample on a mismatch).

vicuna_v1 (SFT, VLM stage 2):
  "{system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"
  targets: each answer (from the space after "ASSISTANT:") and the </s> that ends it.
plain (VLM stage 1): "<image>{caption}\\n"; targets: the caption and the newline.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from data_pipelines.tokenizer import Tokenizer

IMAGE_TOKEN = -200  # the official IMAGE_TOKEN_INDEX; widened to num_visual_tokens slots later
IMAGE_PLACEHOLDER = "<image>"
EOS_TEXT = "</s>"
VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
TEMPLATES = ("vicuna_v1", "plain")


@dataclasses.dataclass(frozen=True)
class Segment:
    text: str
    target: bool


@dataclasses.dataclass(frozen=True)
class Tokenized:
    ids: np.ndarray  # [length] int32, IMAGE_TOKEN where an image goes
    target: np.ndarray  # [length] bool: this token is predicted with loss

    @property
    def num_images(self) -> int:
        return int(np.sum(self.ids == IMAGE_TOKEN))


def _image_first(turns: Sequence[dict], has_image: bool) -> list[dict]:
    """The official preprocessing moves <image> to the front of the first user turn: "<image>\\n" + text."""
    turns = [dict(t) for t in turns]
    if has_image and turns:
        text = turns[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        turns[0]["value"] = f"{IMAGE_PLACEHOLDER}\n{text}"
    return turns


def vicuna_v1_segments(turns: Sequence[dict], has_image: bool = False, generation_prompt: bool = False) -> list[Segment]:
    """turns: alternating {"from": "human"|"gpt", "value"}; starts with human."""
    segments = [Segment(f"{VICUNA_V1_SYSTEM} ", False)]
    for turn in _image_first(turns, has_image):
        if turn["from"] == "human":
            segments.append(Segment(f"USER: {turn['value']} ASSISTANT:", False))
        else:
            segments.append(Segment(f" {turn['value']}{EOS_TEXT}", True))
    if not generation_prompt and turns and turns[-1]["from"] == "human":
        raise ValueError("a training conversation must end with an answer")
    return segments


def plain_segments(turns: Sequence[dict], has_image: bool = True) -> list[Segment]:
    """Stage-1 captions: the human turn is dropped; "<image>" + caption + "\\n"."""
    answer = next(t["value"] for t in turns if t["from"] == "gpt")
    return [Segment(IMAGE_PLACEHOLDER if has_image else "", False), Segment(f"{answer}\n", True)]


def segments_for(template: str, turns: Sequence[dict], has_image: bool) -> list[Segment]:
    if template == "vicuna_v1":
        return vicuna_v1_segments(turns, has_image)
    if template == "plain":
        return plain_segments(turns, has_image)
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


def _split_specials(segments: Sequence[Segment]) -> list[list[Segment] | str]:
    """Chunks of text segments between the special pieces (returned as the strings "</s>" / "<image>")."""
    out: list[list[Segment] | str] = [[]]
    for segment in segments:
        text = segment.text
        while text:
            cut = min((i for i in (text.find(EOS_TEXT), text.find(IMAGE_PLACEHOLDER)) if i >= 0), default=-1)
            if cut < 0:
                out[-1].append(Segment(text, segment.target))
                break
            if cut:
                out[-1].append(Segment(text[:cut], segment.target))
            special = EOS_TEXT if text.startswith(EOS_TEXT, cut) else IMAGE_PLACEHOLDER
            out.append(special if special == IMAGE_PLACEHOLDER else Segment(special, segment.target))
            out.append([])
            text = text[cut + len(special):]
    return out


def _encode_chunk(tokenizer: Tokenizer, chunk: list[Segment]) -> tuple[list[int], list[bool]]:
    """One SentencePiece call for the whole chunk; a piece is a target when it starts inside a target
    segment (offsets are byte offsets into the UTF-8 text)."""
    text = "".join(s.text for s in chunk)
    if not text:
        return [], []
    bounds, start = [], 0
    for segment in chunk:
        end = start + len(segment.text.encode("utf-8"))
        bounds.append((start, end, segment.target))
        start = end
    proto = tokenizer.processor.encode(text, return_type="proto")
    ids, target = [], []
    for piece in proto.pieces:
        ids.append(piece.id)
        begin = min(piece.begin, start - 1)
        target.append(next(t for s, e, t in bounds if s <= begin < e))
    return ids, target


def tokenize(tokenizer: Tokenizer, segments: Sequence[Segment]) -> Tokenized:
    ids, target = [tokenizer.bos_id], [False]
    for chunk in _split_specials(segments):
        if chunk == IMAGE_PLACEHOLDER:
            ids.append(IMAGE_TOKEN)
            target.append(False)
        elif isinstance(chunk, Segment):  # </s>
            ids.append(tokenizer.eos_id)
            target.append(chunk.target)
        else:
            chunk_ids, chunk_target = _encode_chunk(tokenizer, chunk)
            ids += chunk_ids
            target += chunk_target
    return Tokenized(np.asarray(ids, np.int32), np.asarray(target, bool))


def generation_prompt(tokenizer: Tokenizer, turns: Sequence[dict], has_image: bool = False) -> np.ndarray:
    """vicuna_v1 prompt ending in "ASSISTANT:" for inference."""
    return tokenize(tokenizer, vicuna_v1_segments(turns, has_image, generation_prompt=True)).ids
