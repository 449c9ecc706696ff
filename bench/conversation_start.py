"""Start-up of the conversation pipeline on a mix665k-shaped file: time to the first batch and host memory
of the grain workers, tokenizing at start (no cache) against reading the example cache.

The file is synthetic: the sample count and the per-source lengths of bench.packing's mix665k simulation,
text of random words, one PNG that every image record names (the pipeline checks that images exist; it
decodes them only for the rows it reads). Each measurement runs in a fresh process.

  python -m bench.conversation_start [--samples 665298] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.packing import SOURCES, simulate
from bench.report import Headline, write_result

MIX665K = "vlm stage 2 / lora (mix665k, vicuna_v1)"


def write_dataset(root: Path, samples: int) -> dict:
    """A llava-format file shaped like mix665k (the first `samples` of a shuffled simulation), its image, a
    tokenizer; returns the ConversationData keyword arguments."""
    from PIL import Image

    from data_pipelines.tokenizer import train_tokenizer

    lengths, has_image = simulate(SOURCES[MIX665K], 2048)
    pick = np.random.default_rng(0).permutation(len(lengths))[:samples]
    rng = np.random.default_rng(1)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, int(rng.integers(3, 9)))) for _ in range(2000)]
    Image.new("RGB", (64, 64), (90, 120, 200)).save(root / "image.png")
    records = []
    for n, index in enumerate(pick):
        text_tokens = int(lengths[index]) - (144 if has_image[index] else 0)
        turns = max(1, text_tokens // 60)
        conversation = []
        for t in range(turns):  # words of ~2 tokens each, split between question and answer
            question = " ".join(rng.choice(words, 8))
            answer = " ".join(rng.choice(words, max(1, text_tokens // turns // 2 - 10)))
            conversation += [{"from": "human", "value": ("<image>\n" if t == 0 and has_image[index] else "") + question},
                             {"from": "gpt", "value": answer}]
        records.append({"id": str(n), **({"image": "image.png"} if has_image[index] else {}), "conversations": conversation})
    (root / "mix.json").write_text(json.dumps(records))
    texts = [" ".join(rng.choice(words, 50)) for _ in range(2000)] + ["USER: ASSISTANT: A chat between a curious user"]
    tokenizer = train_tokenizer(texts, 800, root / "tok.model")
    return dict(files=[str(root / "mix.json")], format="llava", template="vicuna_v1", tokenizer=str(tokenizer.path),
                seq_len=2048, batch_size=8, image_root=str(root), image_size=64, num_visual_tokens=144,
                images_per_row=6, packer="best_fit", cache_dir=str(root / "cache"))


def measure(arguments: dict, cache: bool, workers: int) -> dict:
    """In this process: seconds to the first batch, and the workers' resident memory then."""
    import psutil
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    from data_pipelines.conversations import ConversationData, build_conversation_dataset
    from data_pipelines.stream import ReadOptions

    started = time.perf_counter()
    config = ConversationData(**{**arguments, "files": tuple(arguments["files"])}, cache=cache,
                              read=ReadOptions(worker_count=workers))
    stream = build_conversation_dataset(config)
    next(stream)
    seconds = time.perf_counter() - started
    children = psutil.Process().children(recursive=True)
    rss = [child.memory_info().rss for child in children]
    stream.close()
    return {"seconds": seconds, "parent_rss": psutil.Process().memory_info().rss,
            "worker_rss": max(rss) if rss else 0, "workers": len(rss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=665_298)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    args = parser.parse_args()
    if args.measure:
        arguments, cache = json.loads(args.measure)
        print(json.dumps(measure(arguments, cache, args.workers)))
        return
    with tempfile.TemporaryDirectory() as directory:
        arguments = write_dataset(Path(directory), args.samples)
        results = {}
        for label, cache in (("tokenize at start (no cache)", False), ("first start (builds the cache)", True),
                             ("later start (reads the cache)", True)):
            done = subprocess.run([sys.executable, "-m", "bench.conversation_start", "--workers", str(args.workers),
                                   "--measure", json.dumps([arguments, cache])], capture_output=True, text=True,
                                  )
            if done.returncode:
                raise SystemExit(f"measurement {label!r} failed:\n{done.stderr[-3000:]}")
            results[label] = json.loads(done.stdout.strip().splitlines()[-1])
            print(label, results[label], flush=True)
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    lines = ["| start | time to first batch | main process memory | memory per grain worker |", "|---|---|---|---|"]
    lines += [f"| {label} | {r['seconds']:.1f} s | {gib(r['parent_rss'])} | {gib(r['worker_rss'])} |"
              for label, r in results.items()]
    base, cached = results["tokenize at start (no cache)"], results["later start (reads the cache)"]
    note = (f"Synthetic mix665k-shaped file, {args.samples:,} conversations, {args.workers} grain workers "
            f"(bench/conversation_start.py). A later start is {base['seconds'] / cached['seconds']:.1f}x faster to its "
            f"first batch; resident memory per worker {gib(base['worker_rss'])} -> {gib(cached['worker_rss'])}.")
    write_result(Path(args.report), "Conversation pipeline start-up", f"python -m bench.conversation_start "
                 f"--samples {args.samples} --workers {args.workers}", lines, note,
                 headline=Headline(f"first batch in {cached['seconds']:.1f} s from the cache ({base['seconds']:.1f} s "
                                   f"tokenizing at start), {gib(cached['worker_rss'])} per worker"))
    print("\n".join(lines))
    print(note)


if __name__ == "__main__":
    main()
