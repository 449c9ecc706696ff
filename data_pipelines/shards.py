"""Tokenized, memory-mapped token shards for pretraining, written by one host or split over many.

  python -m data_pipelines.shards --tokenizer tok.model --input 'redpajama/*.jsonl.zst' --out SHARD_DIR \
      [--workers W] [--part I/N] [--launcher slurm --parts N [--dry-run]]
  (also `mvlm data shard ...`; `mvlm data merge --out SHARD_DIR` merges the parts by hand)

The inputs are cut into units (data_pipelines/partition.py: whole files, and byte ranges of large
uncompressed JSON-lines files), fixed by the inputs alone; `--part I/N` tokenizes the I-th contiguous run of
them, so N hosts share the work and the merged dataset is the same for every N. Each unit becomes one or
more `part-KEY-NNNN.bin` files (raw token ids, uint16 when the vocabulary fits, else uint32; an EOS after
every document; at most `--max-tokens-per-file` tokens each, a longer document continuing in the next
file) and a `part-KEY.json` manifest written last. Files are written under temporary names and renamed
when complete; a re-run skips every unit whose manifest matches (same tokenizer, BOS choice, dtype, input
size and mtime) and whose files are complete, and redoes the others. Each part then writes
`parts/IIII-of-NNNN.json`, and the part that completes the set merges them into `index.json`
(data_pipelines/shard_index.py). `--launcher slurm` submits the N parts as a job array and the merge as a
job after it (data_pipelines/shard_slurm.py).
"""
from __future__ import annotations

import argparse
import collections
import itertools
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from data_pipelines.documents import TFDS_PREFIX, Document, expand_inputs, iter_file_documents
from data_pipelines.partition import DEFAULT_UNIT_BYTES, Unit, input_key, parse_part, part_name, part_units, plan_units
from data_pipelines.shard_index import (FORMAT, INDEX_FILE, PART_FORMAT, completed, manifest_path, merge_parts,
                                        part_path, sum_skipped, unit_identity, unit_record, write_json)
from data_pipelines.tokenizer import Tokenizer
from data_pipelines.validate import SkipReport

__all__ = ["FORMAT", "INDEX_FILE", "input_key", "token_dtype", "write_shards"]

DEFAULT_MAX_TOKENS_PER_FILE = 1 << 28  # 512 MiB of uint16
CHUNK_DOCUMENTS = 256

_worker_tokenizer: Tokenizer | None = None  # one per worker process, set by the pool initializer


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(all ids concatenated, per-document lengths): numpy pickles far faster than lists of ints. One
    SentencePiece thread: the parallelism is the worker processes (and the parts)."""
    encoded = _worker_tokenizer.processor.encode(texts, out_type="numpy", num_threads=1)
    lengths = np.fromiter((len(ids) for ids in encoded), np.int64, len(encoded))
    return (np.concatenate(encoded) if encoded else np.zeros(0, np.int32)), lengths


def _chunks(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(documents)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def with_separators(flat_ids: np.ndarray, lengths: np.ndarray, eos_id: int, bos_id: int | None,
                    dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Documents [sum(lengths)] laid out as [BOS] ids EOS each -> (tokens, per-document lengths)."""
    extra = 1 + (bos_id is not None)
    full = lengths + extra
    ends = np.cumsum(full)
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype)
    text = np.ones(len(out), bool)
    text[ends - 1] = False
    if bos_id is not None:
        text[ends - full] = False
        out[ends - full] = bos_id
    out[ends - 1] = eos_id
    out[text] = flat_ids
    return out, full


class _UnitWriter:
    """Appends documents to bounded .bin files of one unit, each renamed into place when full. A document
    starts a new file when it does not fit the current one; one longer than a whole file is split (the
    stream is read as one sequence, so nothing depends on where files end). `documents` counts the
    documents that start in a file."""

    def __init__(self, out_dir: Path, key: str, max_tokens: int):
        self.out_dir, self.key, self.max_tokens = out_dir, key, max_tokens
        self.files: list[dict] = []
        self._handle = None

    def _open(self) -> None:
        self.close()
        name = f"part-{self.key}-{len(self.files):04d}.bin"
        self.files.append({"name": name, "tokens": 0, "documents": 0})
        self._handle = open(self.out_dir / f".{name}.partial", "wb")

    def _room(self) -> int:
        return self.max_tokens - self.files[-1]["tokens"] if self._handle is not None else 0

    def _write(self, tokens: np.ndarray, documents: int) -> None:
        self._handle.write(tokens.tobytes())
        self.files[-1]["tokens"] += len(tokens)
        self.files[-1]["documents"] += documents

    def add(self, ids: np.ndarray) -> None:
        """One document."""
        room = self._room()
        if room < len(ids) and (room < self.max_tokens or self._handle is None):
            self._open()
        documents = 1
        while len(ids):
            if self.files[-1]["tokens"] == self.max_tokens:
                self._open()
            take = min(len(ids), self.max_tokens - self.files[-1]["tokens"])
            self._write(ids[:take], documents)
            ids, documents = ids[take:], 0

    def add_many(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Consecutive documents of `lengths` tokens: the runs that fit the open file in one write each,
        the document at a file boundary through `add`, so the files are those `add` alone would write."""
        ends = np.cumsum(lengths)
        done, offset = 0, 0
        while done < len(lengths):
            fit = int(np.searchsorted(ends[done:], offset + self._room(), side="right"))
            if fit:
                self._write(tokens[offset:int(ends[done + fit - 1])], fit)
                done += fit
            else:
                self.add(tokens[offset:int(ends[done])])
                done += 1
            offset = int(ends[done - 1])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            name = self.files[-1]["name"]
            os.replace(self.out_dir / f".{name}.partial", self.out_dir / name)
            self._handle = None


def write_shards(inputs: Sequence[str], tokenizer: Tokenizer, out_dir: str | os.PathLike, workers: int = 1,
                 max_tokens_per_file: int = DEFAULT_MAX_TOKENS_PER_FILE, bos: bool = False,
                 progress: bool | None = None, part: tuple[int, int] = (1, 1),
                 unit_bytes: int = DEFAULT_UNIT_BYTES) -> dict:
    """Tokenize part I of N (`part`, 1-based) of `inputs` (files or tfds specs) into `out_dir`. Returns the
    merged index when this part completed the set (always for N = 1; also written), else the part index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = [s if s.startswith(TFDS_PREFIX) else os.path.abspath(s) for s in inputs]
    dtype = token_dtype(tokenizer.vocab_size)
    units = plan_units(inputs, unit_bytes)
    mine = part_units(units, *part)
    todo = []
    manifests: dict[Unit, dict] = {}
    for unit in mine:
        identity = unit_identity(unit, tokenizer.sha256, dtype, bos)
        manifest, _ = completed(out_dir, unit, identity)
        if manifest is None:
            todo.append((unit, identity))
        else:
            manifests[unit] = manifest
    if todo:  # the dataset is being rewritten: no reader may take the old index for it
        (out_dir / INDEX_FILE).unlink(missing_ok=True)
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer,)) if workers > 1 and todo else None
    if pool is None:
        _init_worker(tokenizer)
    bar = tqdm(unit="doc", disable=None if progress is None else not progress,
               desc=f"tokenizing part {part_name(*part)}" if part[1] > 1 else "tokenizing")
    try:
        for unit, identity in todo:
            manifests[unit] = _tokenize_unit(unit, identity, tokenizer, out_dir, max_tokens_per_file, pool, bar)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    counts, examples = sum_skipped([manifests[u] for u in mine])
    part_index = {"format": PART_FORMAT, "part": part[0], "parts": part[1], "inputs": inputs, "unit_bytes": unit_bytes,
                  "units": [unit_record(u) for u in mine], "dtype": dtype.name, "vocab_size": tokenizer.vocab_size,
                  "eos_id": tokenizer.eos_id, "bos_id": tokenizer.bos_id, "bos_prepended": bos,
                  "tokenizer": {"path": str(tokenizer.path), "sha256": tokenizer.sha256},
                  "skipped": {"counts": counts, "examples": examples}}
    write_json(part_path(out_dir, *part), part_index)
    if all(part_path(out_dir, i, part[1]).is_file() for i in range(1, part[1] + 1)):
        try:
            return merge_parts(out_dir, part[1])
        except ValueError as error:  # this part is done; what the set lacks is another part's to fix
            print(f"part {part_name(*part)} written, but the parts do not merge: {error}", file=sys.stderr)
    return part_index


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


def _tokenize_unit(unit: Unit, identity: dict, tokenizer: Tokenizer, out_dir: Path, max_tokens: int, pool,
                   bar: tqdm) -> dict:
    report = SkipReport()
    writer = _UnitWriter(out_dir, unit.key, max_tokens)
    dtype = np.dtype(identity["dtype"])
    sources: dict[str, dict[str, int]] = {}
    chunks = _chunks(iter_file_documents(unit.source, report, unit.byte_range), CHUNK_DOCUMENTS)
    in_flight = 2 * (pool._processes if pool is not None else 1)
    bos_id = tokenizer.bos_id if identity["bos"] else None
    for chunk, (flat_ids, lengths) in _encoded(chunks, pool, in_flight):
        tokens, full = with_separators(flat_ids, lengths, tokenizer.eos_id, bos_id, dtype)
        writer.add_many(tokens, full)
        for document, size in zip(chunk, full.tolist()):
            counts = sources.setdefault(document.source, {"tokens": 0, "documents": 0})
            counts["tokens"] += size
            counts["documents"] += 1
        bar.update(len(chunk))
    writer.close()
    if report.total:
        print(f"{unit.describe()}: skipped {report.total} record(s)\n{report.format()}", file=sys.stderr)
    manifest = {**identity, "files": writer.files, "sources": sources, "skipped": report.as_dict()}
    write_json(manifest_path(out_dir, unit), manifest)
    return manifest


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m data_pipelines.shards", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    parser.add_argument("--input", nargs="+", required=True, help="files/globs (.jsonl[.gz|.zst], .txt) or tfds:NAME:SPLIT")
    parser.add_argument("--out", required=True, help="shard directory")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--max-tokens-per-file", type=int, default=DEFAULT_MAX_TOKENS_PER_FILE)
    parser.add_argument("--bos", action="store_true", help="also put BOS before every document")
    parser.add_argument("--part", default="1/1", help="I/N: tokenize part I of N (one per host); the last to "
                        "finish writes index.json")
    parser.add_argument("--unit-bytes", type=int, default=DEFAULT_UNIT_BYTES,
                        help="cut uncompressed JSON-lines files into ranges of this many bytes (keep it the same "
                             "for every part and re-run)")
    from data_pipelines.shard_slurm import add_launcher_arguments  # the launcher's own options

    add_launcher_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        if args.launcher != "none":
            from data_pipelines.shard_slurm import launch

            return launch(args, main)
        index = write_shards(expand_inputs(args.input), Tokenizer(args.tokenizer), args.out, workers=args.workers,
                             max_tokens_per_file=args.max_tokens_per_file, bos=args.bos, part=parse_part(args.part),
                             unit_bytes=args.unit_bytes)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if index["format"] == PART_FORMAT:
        waiting = [part_name(i, index["parts"]) for i in range(1, index["parts"] + 1)
                   if not part_path(Path(args.out), i, index["parts"]).is_file()]
        print(f"wrote part {part_name(index['part'], index['parts'])} of {args.out} ({len(index['units'])} unit(s)); "
              f"index.json comes when part(s) {', '.join(waiting)} finish (or run `mvlm data merge --out {args.out}`)")
        return 0
    print(f"wrote {args.out}: {index['total_tokens']:,} tokens in {len(index['files'])} file(s) "
          f"from {index['total_documents']:,} documents; skipped {sum(index['skipped'].values())} record(s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
