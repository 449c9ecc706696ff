"""Prompts for generation: the tokenizer of a checkpoint, raw and chat-template prompts (vicuna_v1,
llava_llama_2: data_pipelines.templates) as ids (JAX) or text
(llama.cpp, which tokenizes with its own vocabulary), and the image file check.

Prompt ids keep one IMAGE_TOKEN where the image goes; the engine widens it to the checkpoint's
num_visual_tokens slots (as training does).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from data_pipelines.templates import (CHAT_TEMPLATES, IMAGE_PLACEHOLDER, IMAGE_TOKEN, Segment, chat_segments,
                                     generation_prompt, tokenize)
from data_pipelines.tokenizer import Tokenizer
from mvlm_jax.checkpoint import TOKENIZER_FILE

PROMPT_TEMPLATES = ("raw", *CHAT_TEMPLATES)  # training's "plain" is for captions, not prompts


def find_tokenizer(ckpt: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> Tokenizer:
    """`tokenizer` when given, else CKPT/tokenizer.model; FileNotFoundError naming what was looked for."""
    if tokenizer is not None:
        if not Path(tokenizer).is_file():
            raise FileNotFoundError(f"{tokenizer}: tokenizer model not found (given by --tokenizer)")
        return Tokenizer(tokenizer)
    beside = Path(ckpt) / TOKENIZER_FILE
    if not beside.is_file():
        raise FileNotFoundError(f"no tokenizer: {beside} does not exist; pass --tokenizer SP_MODEL "
                                f"(the SentencePiece tokenizer.model the checkpoint was trained with)")
    return Tokenizer(beside)


def raw_prompt(tokenizer: Tokenizer, text: str, has_image: bool = False) -> np.ndarray:
    """BOS + text (no template), "<image>" in the text splices the image; with an image and no "<image>"
    in the text, the image comes first (the stage-1 `plain` layout: "<image>" + text)."""
    text = prompt_text([{"from": "human", "value": text}], "raw", has_image)
    ids = tokenize(tokenizer, [Segment(text, False)]).ids
    count = int(np.sum(ids == IMAGE_TOKEN))
    if count != int(has_image):
        raise ValueError(f"the prompt holds {count} {IMAGE_PLACEHOLDER} marker(s) but {int(has_image)} image(s) were given")
    return ids


def chat_prompt(tokenizer: Tokenizer, turns: Sequence[dict], has_image: bool = False,
                template: str = "vicuna_v1") -> np.ndarray:
    """[length] ids of `template` ending where the answer starts (vicuna_v1 "ASSISTANT:", llava_llama_2
    "[/INST]"). turns: [{"from": "human" | "gpt", "value": text}, ...], the last one human; an image goes to
    the front of the first human turn (as in training)."""
    if not turns or turns[-1]["from"] != "human":
        raise ValueError("a chat prompt must end with a human turn")
    return generation_prompt(tokenizer, turns, has_image, template)


def build_prompt(tokenizer: Tokenizer, text: str, template: str, has_image: bool = False) -> np.ndarray:
    """One user message as prompt ids in `template` (one of PROMPT_TEMPLATES)."""
    if template == "raw":
        return raw_prompt(tokenizer, text, has_image)
    if template in CHAT_TEMPLATES:
        return chat_prompt(tokenizer, [{"from": "human", "value": text}], has_image, template)
    raise ValueError(f"unknown template {template!r}; expected one of {PROMPT_TEMPLATES}")


def prompt_text(turns: Sequence[dict], template: str, has_image: bool) -> str:
    """The prompt as text, "<image>" where the image goes: a chat template's generation prompt (the image at
    the front of the first human turn), or "raw": the last turn's text, the image first unless the text
    places it."""
    if template in CHAT_TEMPLATES:
        return "".join(s.text for s in chat_segments(template, turns, has_image))
    if template != "raw":
        raise ValueError(f"unknown template {template!r}; expected one of {PROMPT_TEMPLATES}")
    text = turns[-1]["value"]
    return text if not has_image or IMAGE_PLACEHOLDER in text else IMAGE_PLACEHOLDER + text


def find_image(path: str | os.PathLike) -> Path:
    """`path` as a Path; FileNotFoundError naming it when there is no such file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    return Path(path)
