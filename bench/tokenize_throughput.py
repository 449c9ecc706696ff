"""Corpus tokenization throughput per core, against bare SentencePiece, measured in one run.

1. Bare SentencePiece: the documents' texts, already in memory, encoded in batches of 256 on one thread
   (`encode(texts, num_threads=1, out_type="numpy")`): the floor of any tokenizing pipeline; and the same
   in 2 processes at once, each on half the texts: the scaling this machine's cores allow.
2. `mvlm data shard` on one core (one part, --workers 1): reading the JSON lines, checking every record,
   encoding, writing the token files and manifests. Goal: >= 0.8x bare SentencePiece.
3. The same corpus as 2 parts (`--part 1/2`, `--part 2/2`) run at once on this machine, one core each,
   against 1 part run alone, both as separate processes timed end to end. Goal: >= 1.7x.

The corpus is the embedded corpus's documents, joined a few at a time (RedPajama documents are longer
than its few sentences), written as one JSON-lines file and cut into units of --unit-mb.

  python -m bench.tokenize_throughput [--mb 40] [--vocab-size 1000] [--unit-mb 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import Headline, write_result
from data_pipelines.embedded import world
from data_pipelines.tokenizer import Tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> list[str]:
    """JSON lines of about `megabytes` MB; returns the texts."""
    rng = np.random.default_rng(seed)
    texts, size = [], 0
    with path.open("w") as handle:
        while size < megabytes * 1e6:
            text = " ".join(world.corpus_document(rng) for _ in range(int(rng.integers(4, 40))))
            line = json.dumps({"text": text, "meta": {"redpajama_set_name": "RedPajamaBench"}}) + "\n"
            handle.write(line)
            size += len(line.encode())
            texts.append(text)
    return texts


def bare_sentencepiece_seconds(tokenizer: Tokenizer, texts: list[str], batch: int = 256) -> float:
    """One thread, numpy output (SentencePiece's fastest: no Python list of ints per document)."""
    start = time.perf_counter()
    for offset in range(0, len(texts), batch):
        tokenizer.processor.encode(texts[offset:offset + batch], num_threads=1, out_type="numpy")
    return time.perf_counter() - start


def _encode_share(args: tuple[Tokenizer, list[str]]) -> float:
    return bare_sentencepiece_seconds(*args)


def bare_parallel_seconds(tokenizer: Tokenizer, texts: list[str], processes: int) -> float:
    """Bare SentencePiece in `processes` warm processes at once, each on a contiguous share: what this
    machine's cores allow the same work, so the parts' scaling has a ceiling to be read against."""
    import multiprocessing

    shares = [(tokenizer, texts[i * len(texts) // processes:(i + 1) * len(texts) // processes]) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_encode_share, [(tokenizer, texts[:10])] * processes)  # started and warm
        start = time.perf_counter()
        pool.map(_encode_share, shares, chunksize=1)
        return time.perf_counter() - start


def shard_seconds(tokenizer: Path, corpus: Path, out: Path, parts: int, unit_bytes: int) -> float:
    """Wall seconds of `parts` shard processes started together (one worker each), to the last one's end."""
    command = [sys.executable, "-m", "data_pipelines.shards", "--tokenizer", str(tokenizer), "--input", str(corpus),
               "--out", str(out), "--workers", "1", "--unit-bytes", str(unit_bytes)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    running = [subprocess.Popen([*command, "--part", f"{i}/{parts}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
               for i in range(1, parts + 1)]
    if any(process.wait() for process in running):
        raise RuntimeError(f"a shard part failed: {command}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=40.0, help="corpus size (JSON lines)")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--unit-mb", type=float, default=4.0)
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mvlm-tokenize-bench-") as scratch:
        scratch = Path(scratch)
        corpus = scratch / "corpus.jsonl"
        texts = write_corpus(corpus, args.mb)
        megabytes = corpus.stat().st_size / 1e6
        tokenizer = train_tokenizer(texts[:2000], args.vocab_size, scratch / "tok.model")
        unit_bytes = int(args.unit_mb * 1e6)
        bare = bare_sentencepiece_seconds(tokenizer, texts)
        bare_two = bare_parallel_seconds(tokenizer, texts, 2)
        one = shard_seconds(tokenizer.path, corpus, scratch / "one", 1, unit_bytes)
        two = shard_seconds(tokenizer.path, corpus, scratch / "two", 2, unit_bytes)
        same = (scratch / "one" / "index.json").read_text().split('"skipped_by_part"')[0] == \
            (scratch / "two" / "index.json").read_text().split('"skipped_by_part"')[0]
        tokens = json.loads((scratch / "one" / "index.json").read_text())["total_tokens"]
    load = os.getloadavg()[0]
    lines = [f"| {megabytes:.0f} MB of JSON lines, {len(texts):,} documents, {tokens:,} tokens | seconds | MB/s | "
             "ratio |", "|---|---|---|---|",
             f"| bare SentencePiece batch encode, 1 thread (texts in memory) | {bare:.1f} | {megabytes / bare:.1f} | 1.00 |",
             f"| bare SentencePiece, 2 processes at once (2 cores) | {bare_two:.1f} | {megabytes / bare_two:.1f} | "
             f"{bare / bare_two:.2f}x 1 process |",
             f"| `mvlm data shard`, 1 part, 1 worker (1 core) | {one:.1f} | {megabytes / one:.1f} | "
             f"{bare / one:.2f} of SentencePiece |",
             f"| `mvlm data shard`, 2 parts at once, 1 worker each (2 cores) | {two:.1f} | {megabytes / two:.1f} | "
             f"{one / two:.2f}x 1 part |",
             "", f"The 2-part dataset's index.json lists the same files and counts as the 1-part one: {same}."]
    print("\n".join(lines))
    per_core, scaling = bare / one, one / two
    headline = Headline(f"`mvlm data shard` per core {per_core:.2f}x bare SentencePiece; 2 parts {scaling:.2f}x 1 part "
                        f"(bare SentencePiece in 2 processes: {bare / bare_two:.2f}x)",
                        goal=">= 0.8x SentencePiece on one core; 2 parts >= 1.7x 1 part",
                        met=per_core >= 0.8 and scaling >= 1.7)
    write_result(Path(args.report), "Corpus tokenization per core", "python -m bench.tokenize_throughput", lines,
                 headline=headline,
                 note=f"SentencePiece BPE, {args.vocab_size} pieces; units of {args.unit_mb:g} MB; the shard runs "
                      f"are separate processes timed end to end (start-up included); 1-minute load average "
                      f"{load_before:.2f} before and {load:.2f} after the run (the 2-process SentencePiece row is the "
                      "scaling the machine's free cores allowed).")


if __name__ == "__main__":
    main()
