"""Input pipeline throughput, measured in one run on this machine.

1. Pretraining loader tokens/s (the grain pipeline, 0 and 2 worker processes) against raw numpy memmap
   slicing of the same windows in the same order (goal: >= 0.25x raw and >= 50 M tokens/s with 2 workers).
2. Image-text rows/s (decode, pad, bicubic resize, normalise, pack) with 0 and 2 workers.
3. Shard writer MB/s of JSON-lines input (tokenize + write) with 1 and 2 worker processes.

  python -m bench.data_throughput [--tokens 100000000] [--seq-len 2048] [--batch 64]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import flags

from bench.report import Headline, write_result
from data_pipelines.conversations import ConversationData, build_conversation_dataset
from data_pipelines.embedded import generate
from data_pipelines.pretrain_pipeline import PretrainData, build_pretrain_dataset
from data_pipelines.shards import FORMAT, INDEX_FILE, write_shards
from data_pipelines.stream import ReadOptions
from data_pipelines.token_source import TokenWindows
from data_pipelines.tokenizer import train_tokenizer


def synthetic_shards(directory: Path, tokens: int, files: int = 4) -> None:
    """Random uint16 token files plus an index, as the shard writer lays them out."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    for k in range(files):
        data = rng.integers(3, 32000, tokens // files, dtype=np.uint16)
        data[rng.integers(0, len(data), len(data) // 500)] = 2  # an EOS every ~500 tokens
        data.tofile(directory / f"part-{k:05d}-0000.bin")
        entries.append({"name": f"part-{k:05d}-0000.bin", "tokens": len(data), "documents": 0})
    index = {"format": FORMAT, "dtype": "uint16", "vocab_size": 32000, "eos_id": 2, "bos_id": 1,
             "tokenizer": {"sha256": "synthetic"}, "files": entries, "total_tokens": tokens}
    (directory / INDEX_FILE).write_text(json.dumps(index))


def timed(iterator, batches: int, tokens_of) -> float:
    """Units per second over `batches` batches after two warm-up batches."""
    for _ in range(2):
        next(iterator)
    start, units = time.perf_counter(), 0
    for _ in range(batches):
        units += tokens_of(next(iterator))
    return units / (time.perf_counter() - start)


def raw_memmap_rate(shards: Path, config: PretrainData, batches: int) -> float:
    """The floor any loader is measured against: the same windows, sliced straight from the memmaps."""
    windows = TokenWindows(shards, config.seq_len)
    import grain
    order = grain.MapDataset.range(len(windows)).shuffle(seed=config.seed).repeat()

    def raw_batches():
        for step in range(batches + 2):
            starts = [order[step * config.batch_size + j] * config.seq_len for j in range(config.batch_size)]
            window = np.stack([windows.read(s, config.seq_len + 1) for s in starts])
            yield {"tokens": window[:, :-1], "targets": window[:, 1:]}

    return timed(raw_batches(), batches, lambda b: b["tokens"].size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=100_000_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()

    lines = []
    with tempfile.TemporaryDirectory(prefix="mvlm-data-bench-") as scratch:
        scratch = Path(scratch)
        synthetic_shards(scratch / "shards", args.tokens)
        base = PretrainData(sources=((str(scratch / "shards"), 1.0),), seq_len=args.seq_len, batch_size=args.batch)
        raw = raw_memmap_rate(scratch / "shards", base, args.batches)
        lines += ["| pretraining loader | tokens/s | vs raw memmap |", "|---|---|---|",
                  f"| raw numpy memmap slicing | {raw / 1e6:.1f} M | 1.00 |"]
        loader = {}
        for workers in (0, 2):
            config = PretrainData(**{**base.__dict__, "read": ReadOptions(worker_count=workers)})
            stream = build_pretrain_dataset(config)
            rate = loader[workers] = timed(stream, args.batches, lambda b: b["tokens"].size)
            stream.close()
            lines.append(f"| grain pipeline, {workers} workers | {rate / 1e6:.1f} M | {rate / raw:.2f} |")

        generate(scratch / "world", size="small", image_size=64)
        world = scratch / "world"
        corpus = [json.loads(line)["text"] for line in (world / "corpus_train.jsonl").read_text().splitlines()]
        tokenizer = train_tokenizer(corpus, 1000, scratch / "tok.model")
        image_text = ConversationData(files=(str(world / "llava_instruct_train.json"),), format="llava",
                                      tokenizer=str(tokenizer.path), seq_len=2048, batch_size=8,
                                      image_root=str(world / "images"), image_size=336, num_visual_tokens=144,
                                      images_per_row=4)
        lines += ["", "| image-text pipeline (64 px PNGs -> 336 px, packed rows of 2048, 4 images/row) | images/s |",
                  "|---|---|"]
        for workers in (0, 2):
            stream = build_conversation_dataset(ConversationData(**{**image_text.__dict__,
                                                                     "read": ReadOptions(worker_count=workers)}))
            rate = timed(stream, 10, lambda b: int((b["image_slots"] >= 0).sum()))
            stream.close()
            lines.append(f"| {workers} workers | {rate:.0f} |")

        big = scratch / "corpus.jsonl"
        with big.open("w") as handle:
            for _ in range(5):
                for text in corpus * 20:
                    handle.write(json.dumps({"text": text}) + "\n")
        megabytes = big.stat().st_size / 1e6
        lines += ["", f"| shard writer ({megabytes:.0f} MB of JSON lines) | MB/s |", "|---|---|"]
        for workers in (1, 2):
            start = time.perf_counter()
            write_shards([str(big)], tokenizer, scratch / f"out{workers}", workers=workers, progress=False)
            lines.append(f"| {workers} worker(s) | {megabytes / (time.perf_counter() - start):.1f} |")
    print("\n".join(lines))
    write_result(Path(args.report), "Input pipeline throughput", "python -m bench.data_throughput", lines,
                 note=f"seq_len {args.seq_len}, batch {args.batch}, {args.tokens:,} synthetic tokens in 4 files.",
                 headline=Headline(f"pretraining loader {loader[2] / 1e6:.1f} M tokens/s with 2 workers "
                                   f"({loader[2] / raw:.2f}x raw memmap)",
                                   ">= 50 M tokens/s and >= 0.25x raw memmap with 2 workers",
                                   loader[2] >= 50e6 and loader[2] >= 0.25 * raw))


if __name__ == "__main__":
    main()
