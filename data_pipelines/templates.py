"""Conversation templates (`vicuna_v1`, `llava_llama_2`, `plain`) to token ids plus a loss mask.

Tokenization follows the official pipeline (HF LlamaTokenizer, legacy mode, as MobileVLM trains): the
text is split at the special pieces `</s>` (-> EOS id), `<s>` (-> BOS id) and `<image>` (-> IMAGE_TOKEN
placeholder), each chunk is encoded by SentencePiece on its own (so each gets the dummy "▁" prefix), and
BOS starts the sequence. The mask is built from SentencePiece's own piece offsets inside each chunk, not by
re-tokenizing rounds and counting (the official "-2" arithmetic, which silently masks a whole sample on a mismatch).

vicuna_v1 (SFT, VLM stage 2):
  "{system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"
  targets: each answer (from the space after "ASSISTANT:") and the </s> that ends it.
llava_llama_2 (LLaVA's conv_llava_llama_2, SeparatorStyle.LLAMA_2; the paper's Table 10):
  "[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q1} [/INST] {a1} </s><s>[INST] {q2} [/INST] {a2} </s>"
  ids: BOS, "[INST] ... [/INST]", " {a1} " (its trailing space is a "▁" piece), EOS, BOS, "[INST] ...", ...
  targets: each answer from the space after "[/INST]", its trailing "▁" and the </s> (as preprocess_llama_2
  masks: the -2 there drops the BOS and the "▁" that "[/INST] " ends in when tokenized alone); the "<s>"
  (BOS) that opens a later round is masked, as it is there.
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
BOS_TEXT = "<s>"
LLAVA_LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                        "content that the user provides, and assist the user with a variety of tasks using natural "
                        "language.")
TEMPLATES = ("vicuna_v1", "llava_llama_2", "plain")
CHAT_TEMPLATES = ("vicuna_v1", "llava_llama_2")  # the ones with a generation prompt


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


def _ends_with_answer(turns: Sequence[dict], generation_prompt: bool) -> None:
    if not generation_prompt and turns and turns[-1]["from"] == "human":
        raise ValueError("a training conversation must end with an answer")


def vicuna_v1_segments(turns: Sequence[dict], has_image: bool = False, generation_prompt: bool = False) -> list[Segment]:
    """turns: alternating {"from": "human"|"gpt", "value"}; starts with human."""
    segments = [Segment(f"{VICUNA_V1_SYSTEM} ", False)]
    for turn in _image_first(turns, has_image):
        if turn["from"] == "human":
            segments.append(Segment(f"USER: {turn['value']} ASSISTANT:", False))
        else:
            segments.append(Segment(f" {turn['value']}{EOS_TEXT}", True))
    _ends_with_answer(turns, generation_prompt)
    return segments


def llava_llama_2_segments(turns: Sequence[dict], has_image: bool = False,
                           generation_prompt: bool = False) -> list[Segment]:
    """LLaVA's LLAMA_2 separator style: the system prompt inside the first [INST] only, "<s>" before every
    later [INST] (get_prompt joins rounds with sep "<s>" and strips the first), " {answer} </s>" after
    each [/INST]. A generation prompt ends in "[/INST]" (no space), as get_prompt with an empty reply."""
    segments: list[Segment] = []
    for turn in _image_first(turns, has_image):
        if turn["from"] == "human":
            text = turn["value"] if segments else f"<<SYS>>\n{LLAVA_LLAMA_2_SYSTEM}\n<</SYS>>\n\n{turn['value']}"
            segments.append(Segment(f"{BOS_TEXT if segments else ''}[INST] {text} [/INST]", False))
        else:
            segments.append(Segment(f" {turn['value']} {EOS_TEXT}", True))
    _ends_with_answer(turns, generation_prompt)
    return segments


CHAT_SEGMENTS = {"vicuna_v1": vicuna_v1_segments, "llava_llama_2": llava_llama_2_segments}


def plain_segments(turns: Sequence[dict], has_image: bool = True) -> list[Segment]:
    """Stage-1 captions: the human turn is dropped; "<image>" + caption + "\\n"."""
    answer = next(t["value"] for t in turns if t["from"] == "gpt")
    return [Segment(IMAGE_PLACEHOLDER if has_image else "", False), Segment(f"{answer}\n", True)]


def segments_for(template: str, turns: Sequence[dict], has_image: bool) -> list[Segment]:
    if template in CHAT_SEGMENTS:
        return CHAT_SEGMENTS[template](turns, has_image)
    if template == "plain":
        return plain_segments(turns, has_image)
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


SPECIALS = (EOS_TEXT, BOS_TEXT, IMAGE_PLACEHOLDER)  # none is a substring of another


def _split_specials(segments: Sequence[Segment]) -> list[list[Segment] | Segment]:
    """Chunks of text segments between the special pieces (each returned as one Segment of its text)."""
    out: list[list[Segment] | Segment] = [[]]
    for segment in segments:
        text = segment.text
        while text:
            cut = min((i for i in (text.find(s) for s in SPECIALS) if i >= 0), default=-1)
            if cut < 0:
                out[-1].append(Segment(text, segment.target))
                break
            if cut:
                out[-1].append(Segment(text[:cut], segment.target))
            special = next(s for s in SPECIALS if text.startswith(s, cut))
            out.append(Segment(special, segment.target and special != IMAGE_PLACEHOLDER))
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
    special_ids = {EOS_TEXT: tokenizer.eos_id, BOS_TEXT: tokenizer.bos_id, IMAGE_PLACEHOLDER: IMAGE_TOKEN}
    for chunk in _split_specials(segments):
        if isinstance(chunk, Segment):
            ids.append(special_ids[chunk.text])
            target.append(chunk.target)
        else:
            chunk_ids, chunk_target = _encode_chunk(tokenizer, chunk)
            ids += chunk_ids
            target += chunk_target
    return Tokenized(np.asarray(ids, np.int32), np.asarray(target, bool))


def chat_segments(template: str, turns: Sequence[dict], has_image: bool = False) -> list[Segment]:
    """The inference prompt of a chat template: vicuna_v1 ends in "ASSISTANT:", llava_llama_2 in "[/INST]"."""
    if template not in CHAT_SEGMENTS:
        raise ValueError(f"unknown chat template {template!r}; expected one of {CHAT_TEMPLATES}")
    return CHAT_SEGMENTS[template](turns, has_image, generation_prompt=True)


def generation_prompt(tokenizer: Tokenizer, turns: Sequence[dict], has_image: bool = False,
                      template: str = "vicuna_v1") -> np.ndarray:
    """[length] int32 prompt ids of `template` for inference (IMAGE_TOKEN where the image goes)."""
    return tokenize(tokenizer, chat_segments(template, turns, has_image)).ids
