"""Generation speed, measured in one run on this machine: our jitted KV-cache decode (mvlm_jax.generate)
against Hugging Face transformers `generate` (greedy, use_cache=True), on the same small LLaMA with the
same weights (a random HF model imported through our converter), batch 1 and batch 8, 128 new tokens
(goal: at least 2x transformers' decode tokens/s).

Decode tokens/s = batch * (N - 1) / (time to generate N tokens - time to generate 1 token): the prompt's
prefill is measured out. End-to-end tokens/s (prefill included) is reported beside it.

  python -m bench.generate_throughput [--new-tokens 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench.report import Headline, write_result

SHAPE = dict(vocab_size=2048, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=704, max_position_embeddings=512)
PROMPT_LEN = 32
BATCHES = (1, 8)


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call (compilation, caches)."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def agreement(reference, prompts: np.ndarray, ours: list[list[int]], theirs: list[list[int]]) -> str:
    """How many rows generated the same tokens; for the others, where they part and transformers' top-2
    logit gap there (full forward): a gap near float32 rounding is a tie, not a bug."""
    import torch

    notes = []
    for row, (a, b) in enumerate(zip(ours, theirs)):
        if a == b:
            continue
        step = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        with torch.no_grad():
            logits = reference(torch.tensor([list(prompts[row]) + a[:step]])).logits[0, -1].numpy()
        top = np.sort(logits)[-2:]
        notes.append(f"row {row} from token {step}: top-2 logit gap {top[1] - top[0]:.1e}")
    same = f"{len(ours) - len(notes)}/{len(ours)}"
    return same + (f" ({'; '.join(notes)})" if notes else "")


def build_models(directory: Path):
    import torch
    import transformers

    from mvlm_jax.convert.hf import import_hf
    from mvlm_jax.generate import Generator

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SHAPE, eos_token_id=None, bos_token_id=1, pad_token_id=0,
                                      attn_implementation="sdpa")
    reference = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random, peaked weights: greedy outputs differ per prompt and are checkable
        for param in reference.parameters():
            if param.ndim > 1:
                param.normal_(0, 0.08)
    reference.save_pretrained(directory / "hf", safe_serialization=True)
    import_hf(directory / "hf", directory / "ckpt")
    return reference, Generator.from_checkpoint(directory / "ckpt", eos_ids=())


def measure(new_tokens: int, repeats: int) -> list[dict]:
    import torch

    from mvlm_jax.generate import Request, SamplingConfig

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        reference, generator = build_models(Path(scratch))
        rng = np.random.default_rng(0)
        for batch in BATCHES:
            prompts = rng.integers(3, SHAPE["vocab_size"], (batch, PROMPT_LEN)).astype(np.int32)
            prompts[:, 0] = 1
            requests = [Request(p) for p in prompts]
            inputs = torch.from_numpy(prompts).long()

            def ours(n: int) -> list:
                return generator.generate(requests, SamplingConfig(max_new_tokens=n))

            def theirs(n: int):
                with torch.no_grad():
                    return reference.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                              max_new_tokens=n, min_new_tokens=n, use_cache=True, pad_token_id=0)

            agree = agreement(reference, prompts, [c.ids for c in ours(new_tokens)],
                              theirs(new_tokens)[:, PROMPT_LEN:].tolist())
            row = {"batch": batch, "same_tokens": agree}
            for name, run in (("ours", ours), ("hf", theirs)):
                full = best_seconds(lambda: run(new_tokens), repeats)
                prefill = best_seconds(lambda: run(1), repeats)
                row[f"{name}_decode"] = batch * (new_tokens - 1) / (full - prefill)
                row[f"{name}_end_to_end"] = batch * new_tokens / full
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    args = parser.parse_args()
    rows = measure(args.new_tokens, args.repeats)
    lines = ["| batch | ours decode (tokens/s) | transformers decode (tokens/s) | ratio (goal >= 2) | "
             "ours end-to-end | transformers end-to-end | rows with the same greedy tokens |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['batch']} | {row['ours_decode']:,.0f} | {row['hf_decode']:,.0f} | "
                     f"{row['ours_decode'] / row['hf_decode']:.2f} | {row['ours_end_to_end']:,.0f} | "
                     f"{row['hf_end_to_end']:,.0f} | {row['same_tokens']} |")
    print("\n".join(lines))
    shape = ", ".join(f"{k} {v}" for k, v in SHAPE.items())
    ratios = {row["batch"]: row["ours_decode"] / row["hf_decode"] for row in rows}
    write_result(Path(args.report), "Generation speed", f"python -m bench.generate_throughput --new-tokens "
                 f"{args.new_tokens} --repeats {args.repeats}", lines,
                 note=f"small LLaMA: {shape}; prompt {PROMPT_LEN} tokens, {args.new_tokens} new tokens, greedy, "
                      f"float32; ours: one jitted prefill + one jitted while_loop over a static KV cache of "
                      f"max_position_embeddings slots; transformers: generate(use_cache=True), sdpa, torch's "
                      f"default threads; median of {args.repeats} runs after a warm-up.",
                 headline=Headline("decode " + ", ".join(f"{r:.2f}x transformers at batch {b}" for b, r in ratios.items()),
                                   ">= 2x transformers' decode tokens/s", min(ratios.values()) >= 2))


if __name__ == "__main__":
    main()
