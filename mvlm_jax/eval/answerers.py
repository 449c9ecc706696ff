"""Who answers: a checkpoint through the JAX KV-cache engine, or GGUF files through llama.cpp.

Both build the official prompt the same way: the vicuna_v1 template with the image first in the user turn
("<image>\\n" + question text), the text split at "<image>" and each chunk tokenized on its own with BOS on
the first chunk only (MobileVLM's tokenizer_image_token), greedy decoding up to the benchmark's
max_new_tokens, stop at EOS, then the official clean-up: decode without special tokens, strip, drop a
trailing "</s>", strip. `blind=True` withholds the image (the prompt has no "<image>"): the blind baseline.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple, Protocol, Sequence

import numpy as np
from PIL import Image

from data_pipelines import images as clip_images
from data_pipelines.templates import IMAGE_PLACEHOLDER, vicuna_v1_segments
from mvlm_jax.eval.benchmark import Question


class MissingImage(FileNotFoundError):
    """A question's image file does not exist (counted and listed in the report, never dropped)."""


class Answer(NamedTuple):
    text: str  # cleaned as the official generators do
    ids: list[int]  # the generated token ids, EOS excluded (records keep them: runs compare token for token)


class Answerer(Protocol):
    model_id: str

    def answer(self, questions: Sequence[Question], max_new_tokens: int, blind: bool) -> list[Answer]:
        """One answer per question, in order."""


def clean_answer(text: str) -> str:
    """The official generators' clean-up of the decoded answer."""
    text = text.strip()
    if text.endswith("</s>"):
        text = text[:-len("</s>")]
    return text.strip()


def turns(question: Question) -> list[dict]:
    return [{"from": "human", "value": question.text}]


def open_image(question: Question) -> Image.Image:
    """The question's image, decoded; MissingImage naming the file when it is not there."""
    if question.image_bytes is not None:
        with Image.open(io.BytesIO(question.image_bytes)) as image:
            image.load()
            return image.copy()
    if question.image_path is None or not Path(question.image_path).is_file():
        raise MissingImage(f"{question.image_path}: image of question {question.question_id!r} not found")
    return clip_images.load_image(question.image_path, composite_alpha=False)


def square_rgb(image: Image.Image, size: int, pad: bool) -> np.ndarray:
    """The geometric part of the CLIP preprocessing: [size, size, 3] uint8 (pad to square when `pad`,
    resize the shortest edge, centre crop). llama.cpp gets this, so its own resize is the identity."""
    rgb = clip_images.to_rgb(image, composite_alpha=False)
    if pad:
        rgb = clip_images.pad_to_square(rgb)
    return clip_images.center_crop(np.asarray(clip_images.resize_shortest_edge(rgb, size), np.uint8), size)


class JaxAnswerer:
    """A MobileVLM checkpoint through mvlm_jax.generate (batched, rows split over the local devices)."""

    def __init__(self, ckpt: str | os.PathLike, batch_size: int = 16, devices=None, tokenizer=None):
        from mvlm_jax.checkpoint import load_model
        from mvlm_jax.generate.engine import Generator
        from mvlm_jax.generate.prompts import find_tokenizer
        from mvlm_jax.models.config import VLMConfig

        params, config = load_model(ckpt)
        if not isinstance(config, VLMConfig):
            raise ValueError(f"{ckpt}: a text-only LLM checkpoint ({type(config).__name__}); image benchmarks need a "
                             f"MobileVLM checkpoint with a vision tower and a projector (the output of VLM training "
                             f"or `mvlm convert import` of a MobileVLM model)")
        self.tokenizer = find_tokenizer(ckpt, tokenizer)
        self.config, self.params, self.devices = config, params, devices
        self.generator = Generator(config, params, devices=devices)
        self.image_size = config.vision.image_size
        count = len(self.generator.devices)
        self.batch_size = -(-batch_size // count) * count  # whole rows per device
        self.model_id = Path(ckpt).absolute().name
        if self.model_id == "model":  # a training run's output: name it after the run
            self.model_id = Path(ckpt).absolute().parent.name

    def _fit(self, positions: int) -> None:
        """A cache of at least `positions` slots. As the official generate(), answers are not cut at the
        trained context; cache lengths are powers of two, so few lengths are ever compiled."""
        from mvlm_jax.generate.engine import Generator

        if positions > self.generator.max_len:
            self.generator = Generator(self.config, self.params, max_len=1 << (positions - 1).bit_length(),
                                       devices=self.devices)

    def prompt_ids(self, question: Question, blind: bool) -> np.ndarray:
        from data_pipelines.templates import tokenize

        has_image = question.has_image and not blind
        return tokenize(self.tokenizer, vicuna_v1_segments(turns(question), has_image, generation_prompt=True)).ids

    def answer(self, questions: Sequence[Question], max_new_tokens: int, blind: bool) -> list[Answer]:
        from mvlm_jax.generate.engine import Request
        from mvlm_jax.generate.sampling import SamplingConfig

        out = []
        for start in range(0, len(questions), self.batch_size):
            batch = questions[start:start + self.batch_size]
            requests = []
            for question in batch:
                image = None
                if question.has_image and not blind:
                    image = clip_images.normalize(square_rgb(open_image(question), self.image_size, question.pad))
                requests.append(Request(self.prompt_ids(question, blind), image))
            self._fit(max(self.generator.prompt_length(r.ids) for r in requests) + max_new_tokens - 1)
            for completion in self.generator.generate(requests, SamplingConfig(max_new_tokens=max_new_tokens)):
                out.append(Answer(clean_answer(self.tokenizer.processor.decode(completion.ids)), completion.ids))
        return out


class LlamaCppAnswerer:
    """Exported GGUF files (LLM + mmproj) in llama.cpp, one question at a time, tokenized by the GGUF's own
    vocabulary: what runs on the phone, measured with the same questions and prompts."""

    def __init__(self, gguf: str | os.PathLike, mmproj: str | os.PathLike, max_new_tokens: int = 1024,
                 n_threads: int | None = None):
        import gguf as gguf_reader

        from mvlm_jax.edge.llamacpp import LlamaCppModel

        reader = gguf_reader.GGUFReader(str(mmproj))
        field = reader.fields.get("clip.vision.image_size")
        if field is None:
            raise ValueError(f"{mmproj}: not an mmproj file (no clip.vision.image_size)")
        self.image_size = int(field.parts[field.data[0]][0])
        trained = int(gguf_reader.GGUFReader(str(gguf)).fields["llama.context_length"].parts[-1][0])
        # room for the longest official answer after a full-length prompt (answers are not cut at the
        # trained context, as in the official generate())
        self.runtime = LlamaCppModel(gguf, mmproj, n_ctx=trained + max_new_tokens, n_threads=n_threads)
        self.eos_id = self.runtime.llm.token_eos()
        self.model_id = Path(gguf).stem

    def segments(self, question: Question, blind: bool) -> list:
        has_image = question.has_image and not blind
        text = "".join(s.text for s in vicuna_v1_segments(turns(question), has_image, generation_prompt=True))
        before, marker, after = text.partition(IMAGE_PLACEHOLDER)
        if not marker:
            return [self.runtime.tokenize(text, add_bos=True)]
        image = square_rgb(open_image(question), self.image_size, question.pad)
        return [self.runtime.tokenize(before, add_bos=True), image, self.runtime.tokenize(after, add_bos=False)]

    def answer(self, questions: Sequence[Question], max_new_tokens: int, blind: bool) -> list[Answer]:
        out = []
        for question in questions:
            ids = self.runtime.greedy(self.segments(question, blind), max_new_tokens, eos_id=self.eos_id)
            ids = [i for i in ids if i != self.eos_id]
            out.append(Answer(clean_answer(self.runtime.llm.detokenize(ids).decode("utf-8", errors="replace")), ids))
        return out

    def close(self) -> None:
        self.runtime.close()


