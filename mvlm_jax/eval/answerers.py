"""Who answers: a checkpoint through the JAX KV-cache engine, or GGUF files through llama.cpp.

Both build the official prompt the same way: the conversation template (vicuna_v1 by default; llava_llama_2
for a model trained in it, as the official eval's --conv-mode) with "<image>\\n" put in front of the
question text (the official generators prepend it to the raw text, without stripping it), the text split
at "<image>" and each chunk tokenized on its own with BOS on the first chunk only (MobileVLM's
tokenizer_image_token), greedy decoding up to the benchmark's max_new_tokens, stop at EOS, then the
official clean-up: decode without special tokens, strip, drop a trailing "</s>", strip. `blind=True`
withholds the image (the prompt has no "<image>"): the blind baseline. A question whose image is missing
or unreadable gets an empty Answer with `image_error` set (counted and listed by the report).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path
from typing import NamedTuple, Protocol, Sequence

import numpy as np
from PIL import Image

from data_pipelines import images as clip_images
from data_pipelines.templates import CHAT_TEMPLATES, IMAGE_PLACEHOLDER
from mvlm_jax.eval.benchmark import Question


class Answer(NamedTuple):
    text: str  # cleaned as the official generators do
    ids: list[int]  # the generated token ids, EOS excluded (records keep them: runs compare token for token)
    image_error: str | None = None  # why the question's image could not be used (then text is "")


class Answerer(Protocol):
    model_id: str  # written into every record
    fingerprint: str  # what identifies the weights: a resumed run must continue the same model
    batch_size: int  # questions per call worth sending together

    def answer(self, questions: Sequence[Question], max_new_tokens: int, blind: bool) -> list[Answer]:
        """One answer per question, in order."""


def clean_answer(text: str) -> str:
    """The official generators' clean-up of the decoded answer."""
    text = text.strip()
    if text.endswith("</s>"):
        text = text[:-len("</s>")]
    return text.strip()


def turns(question: Question, blind: bool) -> list[dict]:
    """The user turn: "<image>\\n" + the question text as the official generators build it."""
    with_image = question.has_image and not blind
    return [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question.text}" if with_image else question.text}]


def check_template(template: str) -> str:
    if template not in CHAT_TEMPLATES:
        raise ValueError(f"template {template!r}: expected one of {', '.join(CHAT_TEMPLATES)}")
    return template


def template_suffix(template: str) -> str:
    """Part of a run's fingerprint (a resumed run must keep its prompts); "" for the default vicuna_v1, so
    the fingerprints of runs recorded before templates could be chosen stay valid."""
    return "" if template == "vicuna_v1" else f"-{template}"


def open_image(question: Question) -> Image.Image:
    """The question's image, decoded; FileNotFoundError / ValueError naming the file or question."""
    if question.image_bytes is not None:
        try:
            with Image.open(io.BytesIO(question.image_bytes)) as image:
                image.load()
                return image.copy()
        except Exception as error:  # PIL raises several kinds for bad bytes
            raise ValueError(f"question {question.question_id!r}: cannot decode its image "
                             f"({type(error).__name__}: {error})") from error
    if question.image_path is None or not Path(question.image_path).is_file():
        raise FileNotFoundError(f"{question.image_path}: image of question {question.question_id!r} not found")
    return clip_images.load_image(question.image_path, composite_alpha=False)


def square_image(question: Question, size: int) -> np.ndarray | str:
    """[size, size, 3] uint8 pixels of the question's image, or why they cannot be had."""
    try:
        return clip_images.square_pixels(open_image(question), size, question.pad)
    except (OSError, ValueError) as error:
        return str(error)


def file_fingerprint(*paths: str | os.PathLike) -> str:
    """Size and modification time of the files: a rewritten checkpoint or GGUF file changes it."""
    stats = [(str(Path(p).name), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths]
    return hashlib.sha1(repr(stats).encode()).hexdigest()[:16]


def with_dtype(config, dtype: str | None):
    """The model config computing in `dtype` (the official evaluation runs float16), or unchanged."""
    from mvlm_jax.models.layers import DTYPES

    if dtype is None:
        return config
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return dataclasses.replace(config, vision=dataclasses.replace(config.vision, dtype=dtype),
                               projector=dataclasses.replace(config.projector, dtype=dtype),
                               llm=dataclasses.replace(config.llm, dtype=dtype))


MIN_CACHE = 512  # the short-answer benchmarks' prompts + 128 tokens fit: one cache length for them


class JaxAnswerer:
    """A MobileVLM checkpoint through mvlm_jax.generate: batches of `batch_size` questions (the last one
    padded, so one shape compiles), rows split over `devices`, a KV cache as long as the batch needs."""

    def __init__(self, config, params, tokenizer, model_id: str, fingerprint: str, batch_size: int = 16,
                 devices=None, dtype: str | None = None, template: str = "vicuna_v1"):
        """config: a VLMConfig; params: its parameter tree (host or device arrays); tokenizer: the
        data_pipelines.tokenizer.Tokenizer it was trained with; template: its chat template."""
        import jax

        from mvlm_jax.models.config import VLMConfig

        if not isinstance(config, VLMConfig):
            raise ValueError(f"{model_id}: a text-only LLM checkpoint ({type(config).__name__}); image benchmarks "
                             f"need a MobileVLM checkpoint with a vision tower and a projector (the output of VLM "
                             f"training or `mvlm convert import` of a MobileVLM model)")
        self.tokenizer, self.model_id = tokenizer, model_id
        self.config, self.devices = with_dtype(config, dtype), list(devices or jax.local_devices()[:1])
        self.params = jax.device_put(params, jax.sharding.NamedSharding(
            jax.sharding.Mesh(np.asarray(self.devices), ("data",)), jax.sharding.PartitionSpec()))
        self.generators: dict = {}  # cache length -> Generator (compiled functions are shared by all)
        self.image_size = config.vision.image_size
        self.batch_size = -(-batch_size // len(self.devices)) * len(self.devices)  # whole rows per device
        self.template = check_template(template)
        self.fingerprint = f"{fingerprint}-{self.config.llm.dtype}" + template_suffix(template)

    @classmethod
    def from_checkpoint(cls, ckpt: str | os.PathLike, batch_size: int = 16, devices=None, tokenizer=None,
                        dtype: str | None = None, template: str = "vicuna_v1") -> "JaxAnswerer":
        from mvlm_jax.checkpoint import load_model
        from mvlm_jax.generate.prompts import find_tokenizer

        params, config = load_model(ckpt)
        model_id = Path(ckpt).absolute().name
        if model_id == "model":  # a training run's output: name it after the run
            model_id = Path(ckpt).absolute().parent.name
        return cls(config, params, find_tokenizer(ckpt, tokenizer), model_id,
                   file_fingerprint(Path(ckpt) / "model_config.json"), batch_size, devices, dtype, template)

    def generator(self, positions: int):
        """A Generator whose cache holds `positions` slots, rounded up to a power of two of at least
        MIN_CACHE (few lengths ever compile). As the official generate(), answers are not cut at the
        trained context."""
        from mvlm_jax.generate.engine import Generator, position_limit

        length = max(MIN_CACHE, 1 << max(positions - 1, 0).bit_length())
        limit = position_limit(self.config.llm)
        length = max(positions, min(length, limit)) if limit else length  # a longer request is refused there
        if length not in self.generators:
            self.generators[length] = Generator(self.config, self.params, max_len=length, devices=self.devices)
        return self.generators[length]

    def prompt_ids(self, question: Question, blind: bool) -> np.ndarray:
        from data_pipelines.templates import generation_prompt

        return generation_prompt(self.tokenizer, turns(question, blind), template=self.template)

    def answer(self, questions: Sequence[Question], max_new_tokens: int, blind: bool) -> list[Answer]:
        from mvlm_jax.generate.engine import Request
        from mvlm_jax.generate.sampling import SamplingConfig

        out: list[Answer] = []
        for start in range(0, len(questions), self.batch_size):
            batch = questions[start:start + self.batch_size]
            requests, answers = [], {}
            for index, question in enumerate(batch):
                with_image = question.has_image and not blind
                pixels = square_image(question, self.image_size) if with_image else None
                if isinstance(pixels, str):
                    answers[index] = Answer("", [], pixels)
                    continue
                image = None if pixels is None else clip_images.normalize(pixels)
                requests.append((index, Request(self.prompt_ids(question, blind), image)))
            if requests:
                padded = [r for _, r in requests] + [requests[-1][1]] * (self.batch_size - len(requests))
                # image placeholders widen to the visual tokens (ids < 0 are the placeholder only)
                longest = max(len(r.ids) + int(np.sum(np.asarray(r.ids) < 0)) * (self.config.num_visual_tokens - 1)
                              for r in padded)
                generator = self.generator(longest + max_new_tokens - 1)
                completions = generator.generate(padded, SamplingConfig(max_new_tokens=max_new_tokens))
                for (index, _), completion in zip(requests, completions):
                    answers[index] = Answer(clean_answer(self.tokenizer.processor.decode(completion.ids)),
                                            list(completion.ids))
            out += [answers[i] for i in range(len(batch))]
        return out


class LlamaCppAnswerer:
    """Exported GGUF files (LLM + mmproj) in llama.cpp, one question at a time, tokenized by the GGUF's own
    vocabulary: what runs on the phone, measured with the same questions and prompts."""

    batch_size = 1

    def __init__(self, gguf: str | os.PathLike, mmproj: str | os.PathLike, max_new_tokens: int = 1024,
                 n_threads: int | None = None, template: str = "vicuna_v1"):
        import gguf as gguf_reader

        from mvlm_jax.edge.llamacpp import LlamaCppModel

        def field(path, key: str) -> int:
            value = gguf_reader.GGUFReader(str(path)).fields.get(key)
            if value is None:
                raise ValueError(f"{path}: no {key} in this GGUF file (expected an LLM exported by `mvlm export` "
                                 f"and its mmproj file)")
            return int(value.parts[value.data[0]][0])

        self.image_size = field(mmproj, "clip.vision.image_size")
        # room for the longest official answer after a full-length prompt (answers are not cut at the
        # trained context, as in the official generate())
        n_ctx = field(gguf, "llama.context_length") + max_new_tokens
        self.runtime = LlamaCppModel(gguf, mmproj, n_ctx=n_ctx, n_threads=n_threads)
        self.eos_id = self.runtime.llm.token_eos()
        self.model_id = Path(gguf).stem
        self.template = check_template(template)
        self.fingerprint = file_fingerprint(gguf, mmproj) + template_suffix(template)

    def segments(self, question: Question, blind: bool, pixels: np.ndarray | None) -> list:
        from mvlm_jax.edge.llamacpp import prompt_segments
        from mvlm_jax.generate.prompts import prompt_text

        return prompt_segments(self.runtime, prompt_text(turns(question, blind), self.template, has_image=False), pixels)

    def answer(self, questions: Sequence[Question], max_new_tokens: int, blind: bool) -> list[Answer]:
        out = []
        for question in questions:
            pixels = square_image(question, self.image_size) if question.has_image and not blind else None
            if isinstance(pixels, str):
                out.append(Answer("", [], pixels))
                continue
            ids = self.runtime.greedy(self.segments(question, blind, pixels), max_new_tokens, eos_id=self.eos_id)
            ids = [i for i in ids if i != self.eos_id]
            out.append(Answer(clean_answer(self.runtime.llm.detokenize(ids).decode("utf-8", errors="replace")), ids))
        return out

    def close(self) -> None:
        self.runtime.close()
