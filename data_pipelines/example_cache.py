"""Tokenize conversation data once: a content-keyed cache of the examples as memory-mapped arrays.

LLaVA's mix665k has 665k conversations. Tokenizing them at every start, in every process, and pickling
the result into every grain worker costs minutes and gigabytes each time a preempted run restarts. The
cache holds what `prepare_examples` computes, keyed by everything that decides it (the files' contents,
the tokenizer, format, template, seq_len, visual tokens, truncation, the image root and check, and the
source of the code that tokenizes), in one directory:

  ids.npy, target.npy   every example's template ids / target mask, concatenated (int32 / bool)
  offsets.npy           [examples + 1] int64: example i is ids[offsets[i]:offsets[i + 1]]
  lengths.npy           [examples] int64 model inputs with images widened
  images.npy            [examples] fixed-width bytes: the image path, b"" for none
  meta.json             counts, the skip report as it was printed, the key's inputs

It is written under a temporary name and renamed when complete, so a reader sees all of it or none; two
processes racing to write it keep the first. The arrays are opened memory-mapped, and the examples pickle
as the cache path, so grain workers reopen them instead of receiving a copy.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

VERSION = 1
# The modules whose code decides the examples: a change to any of them is a new key.
_SOURCES = ("conversations.py", "templates.py", "validate.py", "records.py", "tokenizer.py", "example_cache.py")


def default_root() -> Path:
    """$MVLM_CACHE, else $XDG_CACHE_HOME/mvlm-jax, else ~/.cache/mvlm-jax; examples/ below it."""
    root = os.environ.get("MVLM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mvlm-jax"
    return Path(root) / "examples"


def cache_key(inputs: dict[str, Any]) -> str:
    """sha256 of the key's inputs plus the source of the modules that compute examples."""
    digest = hashlib.sha256(json.dumps({"version": VERSION, **inputs}, sort_keys=True).encode())
    here = Path(__file__).parent
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:32]


class _Slices(Sequence):
    """Example i of a concatenated array, without copying."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.flat[self.offsets[index]:self.offsets[index + 1]]


class _Paths(Sequence):
    def __init__(self, paths: np.ndarray):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str | None:
        path = bytes(self.paths[index])
        return path.decode() if path else None


class CachedExamples:
    """The examples of one cache directory, memory-mapped; the same interface as conversations.Examples."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        load = lambda name: np.load(self.directory / name, mmap_mode="r")  # noqa: E731
        offsets = np.asarray(load("offsets.npy"))
        self.ids, self.target = _Slices(load("ids.npy"), offsets), _Slices(load("target.npy"), offsets)
        self._paths = load("images.npy")
        self.images = _Paths(self._paths)
        self.lengths = load("lengths.npy")
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self.truncated = self.meta["truncated"]
        from data_pipelines.validate import SkipReport

        self.report = SkipReport()
        self.report.counts.update(self.meta["skipped"])

    @property
    def has_image(self) -> np.ndarray:
        return np.asarray(self._paths != b"")

    def __len__(self) -> int:
        return len(self.lengths)

    def __reduce__(self):  # grain workers reopen the files instead of receiving the arrays
        return CachedExamples, (str(self.directory),)


def write(directory: Path, ids: list[np.ndarray], target: list[np.ndarray], images: list[str | None],
          lengths: list[int], meta: dict) -> None:
    """Write one cache directory atomically (keeps an existing one: another process was first)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = directory.parent / f".{directory.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        offsets = np.zeros(len(ids) + 1, np.int64)
        offsets[1:] = np.cumsum([len(x) for x in ids])
        np.save(partial / "ids.npy", np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, np.int32))
        np.save(partial / "target.npy", np.concatenate(target).astype(bool) if target else np.zeros(0, bool))
        np.save(partial / "offsets.npy", offsets)
        np.save(partial / "lengths.npy", np.asarray(lengths, np.int64))
        np.save(partial / "images.npy", np.asarray([(path or "").encode() for path in images], dtype=bytes))
        (partial / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(partial, directory)
        except OSError:
            if not (directory / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def cached(directory: Path, build: Callable[[], tuple[list, list, list, list, dict]]) -> CachedExamples:
    """The examples of `directory`, built and written first when it is missing."""
    if (directory / "meta.json").is_file():
        examples = CachedExamples(directory)
        print(f"examples: {len(examples):,} from the cache {directory}", file=sys.stderr)
        return examples
    write(directory, *build())
    return CachedExamples(directory)
