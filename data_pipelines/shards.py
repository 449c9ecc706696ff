"""Tokenized, memory-mapped token shards for pretraining.

  python -m data_pipelines.shards --tokenizer tok.model --input 'redpajama/*.jsonl.zst' --out SHARD_DIR [--workers N]
  (also `mvlm data shard ...`)

Each input file becomes one or more `part-IIIII-KKKK.bin` files (raw token ids, uint16 when the vocabulary
fits, else uint32; an EOS after every document; at most `--max-tokens-per-file` tokens each) and a
`part-IIIII.json` manifest written last. Files are written under temporary names and renamed when
complete; a re-run skips every input whose manifest and files are complete. `index.json` sums it all up:
token counts, dtype, tokenizer hash, sources, skipped records.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

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
    """Appends documents to bounded .bin files of one input, each renamed into place when full."""

    def __init__(self, out_dir: Path, input_index: int, dtype: np.dtype, max_tokens: int):
        self.out_dir, self.input_index, self.dtype, self.max_tokens = out_dir, input_index, dtype, max_tokens
        self.files: list[dict] = []
        self._handle = None

    def _open(self) -> None:
        name = f"part-{self.input_index:05d}-{len(self.files):04d}.bin"
        self.files.append({"name": name, "tokens": 0, "documents": 0})
        self._handle = open(self.out_dir / f".{name}.partial", "wb")

    def add(self, ids: np.ndarray) -> None:
        if self._handle is None or (self.files[-1]["tokens"] and self.files[-1]["tokens"] + len(ids) > self.max_tokens):
            self.close()
            self._open()
        self._handle.write(ids.astype(self.dtype).tobytes())
        self.files[-1]["tokens"] += len(ids)
        self.files[-1]["documents"] += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            name = self.files[-1]["name"]
            os.replace(self.out_dir / f".{name}.partial", self.out_dir / name)
            self._handle = None


def _manifest_path(out_dir: Path, input_index: int) -> Path:
    return out_dir / f"part-{input_index:05d}.json"


def _complete(out_dir: Path, input_index: int, source: str, tokenizer: Tokenizer, dtype: np.dtype) -> dict | None:
    """The manifest of an input that a previous run finished, or None."""
    path = _manifest_path(out_dir, input_index)
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest["input"] != source or manifest["tokenizer_sha256"] != tokenizer.sha256:
        raise ValueError(f"{path}: written from {manifest['input']} with tokenizer {manifest['tokenizer_sha256'][:12]}, "
                         f"not {source} with {tokenizer.sha256[:12]}; use a fresh --out")
    for file in manifest["files"]:
        if not (out_dir / file["name"]).is_file() or (out_dir / file["name"]).stat().st_size != file["tokens"] * dtype.itemsize:
            return None
    return manifest


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(partial, path)


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
        for input_index, source in enumerate(inputs):
            manifest = _complete(out_dir, input_index, source, tokenizer, dtype)
            if manifest is None:
                manifest = _tokenize_input(source, input_index, tokenizer, out_dir, dtype, max_tokens_per_file,
                                           bos, pool, bar)
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


def _tokenize_input(source: str, input_index: int, tokenizer: Tokenizer, out_dir: Path, dtype: np.dtype,
                    max_tokens: int, bos: bool, pool, bar: tqdm) -> dict:
    report = SkipReport()
    writer = _PartWriter(out_dir, input_index, dtype, max_tokens)
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
    manifest = {"input": source, "tokenizer_sha256": tokenizer.sha256, "files": writer.files, "sources": sources,
                "skipped": report.as_dict()}
    _write_json(_manifest_path(out_dir, input_index), manifest)
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
