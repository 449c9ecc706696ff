"""Text documents from corpus files: JSON lines with a `text` field (RedPajama v1; also .gz / .zst),
plain .txt files (one document each), and TFDS datasets by name (`tfds:NAME/CONFIG:SPLIT`)."""
from __future__ import annotations

import dataclasses
import glob
import os
from pathlib import Path
from typing import Iterator, Sequence

from data_pipelines.records import Problem, Record, iter_records, line_base
from data_pipelines.validate import SkipReport, check_text

TFDS_PREFIX = "tfds:"
TEXT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst", ".txt")


@dataclasses.dataclass(frozen=True)
class Document:
    text: str
    source: str  # corpus part (RedPajama's set name when present), for the shard index and mixtures
    origin: str  # "file:line" (in a byte range of a file: "file@start:line-in-range"), for messages


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Globs -> a sorted, de-duplicated list of input files; `tfds:` specs pass through."""
    inputs: list[str] = []
    for pattern in patterns:
        if pattern.startswith(TFDS_PREFIX):
            inputs.append(pattern)
            continue
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise FileNotFoundError(f"{pattern}: no such file")
        unknown = [m for m in matches if not m.endswith(TEXT_SUFFIXES)]
        if unknown:
            raise ValueError(f"{unknown[0]}: unsupported file type; expected one of {TEXT_SUFFIXES}")
        inputs += [m for m in matches if m not in inputs]
    return inputs


def _source_of(data: dict, default: str) -> str:
    meta = data.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("redpajama_set_name"), str):
        return meta["redpajama_set_name"]
    return data["source"] if isinstance(data.get("source"), str) else default


def _tfds_documents(spec: str) -> Iterator[Document]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise RuntimeError(f"{spec}: reading TFDS needs tensorflow-datasets (pip install -e '.[tfds]')") from error
    name, _, split = spec[len(TFDS_PREFIX):].partition(":")
    source = tfds.data_source(name, split=split or "train")
    for index in range(len(source)):
        text = source[index]["text"]
        yield Document(text.decode("utf-8") if isinstance(text, bytes) else text, name.split("/")[0], f"{spec}#{index}")


class _FileLines:
    """Turns the line numbers of a byte range into the file's, counting the lines before the range only
    when a problem needs them (problems are rare; counting means reading the file up to the range)."""

    def __init__(self, path: str, start: int):
        self.path, self.start, self._base = path, start, None

    def problem(self, problem: Problem) -> Problem:
        if self.start == 0:
            return problem
        if self._base is None:
            self._base = line_base(self.path, self.start)
        return dataclasses.replace(problem, line=problem.line + self._base)


def iter_file_documents(path: str, report: SkipReport, byte_range: tuple[int, int] | None = None,
                        ) -> Iterator[Document]:
    """Documents of one input (of its lines starting in `byte_range`, for uncompressed JSON lines); bad
    records are counted in `report` with the file's line numbers, never silently dropped."""
    if path.startswith(TFDS_PREFIX):
        yield from _tfds_documents(path)
        return
    if path.endswith(".txt"):
        try:
            yield Document(Path(path).read_text(encoding="utf-8"), Path(path).stem, f"{path}:1")
        except UnicodeDecodeError as error:
            report.add(Problem(path, 1, "non_utf8", f"byte {error.start} is not UTF-8"))
        return
    default_source = Path(path).name.split(".")[0]
    lines = _FileLines(path, byte_range[0] if byte_range else 0)
    where = f"{path}@{lines.start}" if lines.start else path
    for item in iter_records(path, byte_range):
        if isinstance(item, Problem):
            report.add(lines.problem(item))
            continue
        problems = check_text(item)
        if problems:
            for problem in problems:
                report.add(lines.problem(problem))
            continue
        yield Document(item.data["text"], _source_of(item.data, default_source), f"{where}:{item.line}")


def iter_documents(inputs: Sequence[str], report: SkipReport | None = None) -> Iterator[Document]:
    report = report if report is not None else SkipReport()
    for path in inputs:
        yield from iter_file_documents(path, report)


__all__ = ["Document", "Record", "expand_inputs", "iter_documents", "iter_file_documents"]
