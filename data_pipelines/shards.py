"""Tokenized, memory-mapped token shards for pretraining.

  python -m data_pipelines.shards --tokenizer tok.model --input 'redpajama/*.jsonl.zst' --out SHARD_DIR [--workers N]
  (also `mvlm data shard ...`)

Each input becomes one or more `part-KEY-NNNN.bin` files (raw token ids, uint16 when the vocabulary
fits, else uint32; an EOS after every document; at most `--max-tokens-per-file` tokens each, a longer
document continuing in the next file) and a `part-KEY.json` manifest written last. KEY is a hash of the
input's absolute path, so inputs can be added, reordered or re-spelled between runs. Files are written
under temporary names and renamed when complete; a re-run skips every input whose manifest matches (same
tokenizer, BOS choice, dtype, input size and mtime) and whose files are complete, and redoes the others.
`index.json` sums it all up in input order: token counts, dtype, tokenizer hash, sources, skipped records.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from data_pipelines.atomic import write_bytes
from data_pipelines.documents import Document, expand_inputs, iter_file_documents
from data_pipelines.tokenizer import Tokenizer
from data_pipelines.validate import SkipReport

INDEX_FILE = "index.json"
FORMAT = "mvlm-token-shards/1"
DEFAULT_MAX_TOKENS_PER_FILE = 1 << 28  # 512 MiB of uint16
CHUNK_DOCUMENTS = 256

_worker_tokenizer: Tokenizer | None = None  # one per worker process, set by the pool initializer


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(all ids concatenated, per-document lengths): numpy pickles far faster than lists of ints."""
    encoded = _worker_tokenizer.encode_batch(texts)
    lengths = np.fromiter((len(ids) for ids in encoded), np.int64, len(encoded))
    return np.fromiter(itertools.chain.from_iterable(encoded), np.int32, int(lengths.sum())), lengths


def _chunks(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(documents)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class _PartWriter:
    """Appends documents to bounded .bin files of one input, each renamed into place when full. A document
    starts a new file when it does not fit the current one; one longer than a whole file is split (the
    stream is read as one sequence, so nothing depends on where files end). `documents` counts the
    documents that start in a file."""

    def __init__(self, out_dir: Path, key: str, dtype: np.dtype, max_tokens: int):
        self.out_dir, self.key, self.dtype, self.max_tokens = out_dir, key, dtype, max_tokens
        self.files: list[dict] = []
        self._handle = None

    def _open(self) -> None:
        self.close()
        name = f"part-{self.key}-{len(self.files):04d}.bin"
        self.files.append({"name": name, "tokens": 0, "documents": 0})
        self._handle = open(self.out_dir / f".{name}.partial", "wb")

    def add(self, ids: np.ndarray) -> None:
        room = self.max_tokens - self.files[-1]["tokens"] if self._handle is not None else 0
        if room < len(ids) and (room < self.max_tokens or self._handle is None):
            self._open()
        self.files[-1]["documents"] += 1
        while len(ids):
            if self.files[-1]["tokens"] == self.max_tokens:
                self._open()
            take = min(len(ids), self.max_tokens - self.files[-1]["tokens"])
            self._handle.write(ids[:take].astype(self.dtype).tobytes())
            self.files[-1]["tokens"] += take
            ids = ids[take:]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            name = self.files[-1]["name"]
            os.replace(self.out_dir / f".{name}.partial", self.out_dir / name)
            self._handle = None


def input_key(source: str) -> str:
    """Stable name of an input: a hash of its absolute path (tfds specs as written)."""
    identity = source if source.startswith("tfds:") else str(Path(source).absolute())
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def _identity(source: str, tokenizer: Tokenizer, dtype: np.dtype, bos: bool) -> dict:
    """What must match for a previous run's output of this input to be reused."""
    stat = None if source.startswith("tfds:") else os.stat(source)
    return {"input": source, "tokenizer_sha256": tokenizer.sha256, "dtype": dtype.name, "bos": bos,
            "input_bytes": stat.st_size if stat else None, "input_mtime_ns": stat.st_mtime_ns if stat else None}


def _complete(out_dir: Path, identity: dict) -> dict | None:
    """The manifest of an input that a previous run finished with the same identity, or None (redo)."""
    path = out_dir / f"part-{input_key(identity['input'])}.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if any(manifest.get(key) != value for key, value in identity.items() if key != "input"):
        return None
    dtype = np.dtype(identity["dtype"])
    for file in manifest["files"]:
        if not (out_dir / file["name"]).is_file() or (out_dir / file["name"]).stat().st_size != file["tokens"] * dtype.itemsize:
            return None
    return manifest


def _write_json(path: Path, data: dict) -> None:
    write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def write_shards(inputs: Sequence[str], tokenizer: Tokenizer, out_dir: str | os.PathLike, workers: int = 1,
                 max_tokens_per_file: int = DEFAULT_MAX_TOKENS_PER_FILE, bos: bool = False,
                 progress: bool | None = None) -> dict:
    """Tokenize `inputs` (files or tfds specs) into `out_dir`; returns the index (also written)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    manifests = []
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer,)) if workers > 1 else None
    if pool is None:
        _init_worker(tokenizer)
    bar = tqdm(unit="doc", disable=None if progress is None else not progress, desc="tokenizing")
    try:
        for source in inputs:
            identity = _identity(source, tokenizer, dtype, bos)
            manifest = _complete(out_dir, identity)
            if manifest is None:
                manifest = _tokenize_input(identity, tokenizer, out_dir, max_tokens_per_file, pool, bar)
            manifests.append(manifest)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    index = _index(inputs, manifests, tokenizer, dtype, bos)
    _write_json(out_dir / INDEX_FILE, index)
    return index


def _encoded(chunks: Iterator[list[Document]], pool, in_flight: int) -> Iterator[tuple[list[Document], tuple]]:
    """(chunk, token ids) in input order, with at most `in_flight` chunks queued in the pool: Pool.imap
    would read a whole multi-GB input ahead of the workers."""
    if pool is None:
        for chunk in chunks:
            yield chunk, _encode_chunk([d.text for d in chunk])
        return
    pending: collections.deque = collections.deque()
    for chunk in chunks:
        pending.append((chunk, pool.apply_async(_encode_chunk, ([d.text for d in chunk],))))
        if len(pending) >= in_flight:
            done, result = pending.popleft()
            yield done, result.get()
    while pending:
        done, result = pending.popleft()
        yield done, result.get()


def _tokenize_input(identity: dict, tokenizer: Tokenizer, out_dir: Path, max_tokens: int, pool, bar: tqdm) -> dict:
    source, bos = identity["input"], identity["bos"]
    report = SkipReport()
    writer = _PartWriter(out_dir, input_key(source), np.dtype(identity["dtype"]), max_tokens)
    sources: dict[str, dict[str, int]] = {}
    chunks = _chunks(iter_file_documents(source, report), CHUNK_DOCUMENTS)
    in_flight = 2 * (pool._processes if pool is not None else 1)
    prefix = np.asarray([tokenizer.bos_id] if bos else [], np.int32)
    suffix = np.asarray([tokenizer.eos_id], np.int32)
    for chunk, (flat_ids, lengths) in _encoded(chunks, pool, in_flight):
        for document, ids in zip(chunk, np.split(flat_ids, np.cumsum(lengths)[:-1])):
            full = np.concatenate([prefix, ids, suffix])
            writer.add(full)
            counts = sources.setdefault(document.source, {"tokens": 0, "documents": 0})
            counts["tokens"] += len(full)
            counts["documents"] += 1
        bar.update(len(chunk))
    writer.close()
    if report.total:
        print(f"{source}: skipped {report.total} record(s)\n{report.format()}", file=sys.stderr)
    manifest = {**identity, "files": writer.files, "sources": sources, "skipped": report.as_dict()}
    _write_json(out_dir / f"part-{input_key(source)}.json", manifest)
    return manifest


def _index(inputs: Sequence[str], manifests: list[dict], tokenizer: Tokenizer, dtype: np.dtype, bos: bool) -> dict:
    sources: dict[str, dict[str, int]] = {}
    skipped: dict[str, int] = {}
    for manifest in manifests:
        for name, counts in manifest["sources"].items():
            total = sources.setdefault(name, {"tokens": 0, "documents": 0})
            total["tokens"] += counts["tokens"]
            total["documents"] += counts["documents"]
        for reason, count in manifest["skipped"].get("counts", {}).items():
            skipped[reason] = skipped.get(reason, 0) + count
    files = [dict(file, input=m["input"]) for m in manifests for file in m["files"]]
    return {"format": FORMAT, "dtype": dtype.name, "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
            "bos_id": tokenizer.bos_id, "bos_prepended": bos,
            "tokenizer": {"path": str(tokenizer.path), "sha256": tokenizer.sha256},
            "total_tokens": sum(f["tokens"] for f in files), "total_documents": sum(f["documents"] for f in files),
            "files": files, "sources": sources, "skipped": skipped, "inputs": list(inputs)}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m data_pipelines.shards", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    parser.add_argument("--input", nargs="+", required=True, help="files/globs (.jsonl[.gz|.zst], .txt) or tfds:NAME:SPLIT")
    parser.add_argument("--out", required=True, help="shard directory")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--max-tokens-per-file", type=int, default=DEFAULT_MAX_TOKENS_PER_FILE)
    parser.add_argument("--bos", action="store_true", help="also put BOS before every document")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        index = write_shards(expand_inputs(args.input), Tokenizer(args.tokenizer), args.out, workers=args.workers,
                             max_tokens_per_file=args.max_tokens_per_file, bos=args.bos)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {index['total_tokens']:,} tokens in {len(index['files'])} file(s) "
          f"from {index['total_documents']:,} documents; skipped {sum(index['skipped'].values())} record(s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
