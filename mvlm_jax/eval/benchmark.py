"""The contract every image benchmark module follows, and the registry of them.

A benchmark module (mvlm_jax/eval/<name>.py) defines:

    NAME: str                      # "gqa", also the sub-directory of OUT
    MAX_NEW_TOKENS: int            # the official generator's max_new_tokens
    SCORE_KEYS: tuple[str, ...]    # the headline keys of its scores, in report order
    def required_files(data_root: Path) -> dict[Path, str]
        # every file the generator or the scorer reads (not images) -> what belongs there
    def questions(data_root: Path) -> list[Question]
        # in the official file's order, prompts exactly as the official generator builds them
    def score(records: list[dict], data_root: Path, limit: int | None = None) -> dict
        # the official rules over answer records (the official record format); reads only the question
        # and annotation files; raises AnswerError naming the ids of unknown / duplicate records;
        # `limit`: the records answer only the first `limit` questions of the question file
    def majority_answers(questions: list[Question], data_root: Path) -> list[str] | None
        # for a closed answer set: per question, the most frequent gold answer of its question type
        # (scored by score() as the most-frequent-answer baseline); None for open answer sets

Answer records are dicts as the official generators write them (one JSON object per line):
    {"question_id", "prompt", "text", "answer_id", "model_id", "metadata": {}} plus Question.record_extra
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

# The official vicuna_v1 runs: every benchmark in the paper's Table 4, in its column order.
PAPER_BENCHMARKS = ("gqa", "sqa", "textvqa", "pope", "mme", "mmbench")
BENCHMARKS = PAPER_BENCHMARKS + ("demo_world",)


class BenchmarkFileError(FileNotFoundError):
    """A benchmark file is missing; the message names the path and what belongs there."""


class AnswerError(ValueError):
    """An answers file does not fit the benchmark's questions; the message names the ids."""


@dataclasses.dataclass(frozen=True)
class Question:
    """One question as the official generator feeds it.

    question_id: as in the official question file (int for POPE, str elsewhere; not unique in TextVQA and
        MME, where a record is identified by (question_id, prompt)).
    text: the user turn without "<image>": the question file's text with its suffix, plus what the
        generator appends (SQA's and MMBench's instruction, MMBench's hint and options).
    prompt: the answer record's "prompt" field, as the official generator writes it.
    image_path: the image file, or None (no image, or the image is in image_bytes).
    image_bytes: an encoded image carried inside the question file (MMBench's base64 column), or None.
    pad: pad the image to a square before the CLIP resize (all but SQA).
    category: the question type (per-type scores and the most-frequent-answer baseline).
    record_extra: fields the official generator adds to the answer record (MMBench: round_id, options,
        option_char).
    """

    question_id: Any
    text: str
    prompt: str
    image_path: Path | None = None
    image_bytes: bytes | None = None
    pad: bool = True
    category: str = "default"
    record_extra: dict = dataclasses.field(default_factory=dict)

    @property
    def has_image(self) -> bool:
        return self.image_path is not None or self.image_bytes is not None

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the question's record: (question_id, prompt), unique in every benchmark."""
        return str(self.question_id), self.prompt


def module(name: str) -> ModuleType:
    """The module of benchmark `name`; ValueError listing the known ones."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"mvlm_jax.eval.{name}")


def parse_names(text: str) -> list[str]:
    """"gqa,sqa" -> ["gqa", "sqa"] (checked); "all" -> the paper's six."""
    names = PAPER_BENCHMARKS if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        module(name)
    return list(names)


def check_files(names: Sequence[str], data_root: Path) -> None:
    """BenchmarkFileError listing every missing file of the benchmarks `names`, with what belongs there."""
    missing = [(name, path, what) for name in names
               for path, what in module(name).required_files(Path(data_root)).items() if not Path(path).exists()]
    if missing:
        lines = "\n".join(f"  {name}: {path}: {what}" for name, path, what in missing)
        raise BenchmarkFileError(f"{len(missing)} benchmark file(s) missing under --data-root {data_root} "
                                 f"(MobileVLM's benchmark_data layout):\n{lines}")
