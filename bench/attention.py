"""Causal attention forward + backward: XLA's dense attention against `causal_blocks` (the same XLA
attention per query block over the keys before it), measured in one run, as the LLM's layers call it.

Shapes: the demo's rows (batch 8 x 512 tokens, the VLM stage 2 and SFT rows; 16 x 256, pretraining) with
its 4 heads of 32, and one MobileLLaMA 1.4B layer's heads (16 of 128) on 2 rows of 2048. float32 on one
CPU device, compiled with the trainer's CPU options (train/step.py CPU_COMPILER_OPTIONS).

  python -m bench.attention [--repeats 10]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp

from bench.report import Headline, mean_seconds, write_result
from mvlm_jax.models.attention import CAUSAL_BLOCK, attention, segment_causal_mask
from mvlm_jax.train.step import CPU_COMPILER_OPTIONS

SHAPES = {"demo 8x512": (8, 512, 4, 32), "demo 16x256": (16, 256, 4, 32), "1.4b 2x2048": (2, 2048, 16, 128)}


def seconds_per_grad(implementation: str | None, shape: tuple[int, int, int, int], repeats: int) -> float:
    """Seconds of one jitted forward + backward (gradients of query, key and value) of causal attention."""
    batch, length, heads, head_dim = shape
    query, key, value, weights = (jax.random.normal(jax.random.key(i), (batch, length, heads, head_dim))
                                  for i in range(4))
    # two segments per row, as packed rows have: the mask is causal and block-diagonal
    segments = jnp.broadcast_to(1 + (jnp.arange(length) >= length // 3), (batch, length)).astype(jnp.int32)
    mask = segment_causal_mask(segments)
    loss = lambda q, k, v: jnp.sum(attention(q, k, v, mask, implementation) * weights)  # noqa: E731
    step = jax.jit(jax.grad(loss, (0, 1, 2)), compiler_options=CPU_COMPILER_OPTIONS)
    return mean_seconds(step, query, key, value, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    args = parser.parse_args()
    lines = ["| rows x tokens | heads x head_dim | causal_blocks (ms) | XLA dense (ms) | speed-up |", "|---|---|---|---|---|"]
    speedups = []
    for name, shape in SHAPES.items():
        ours = seconds_per_grad("causal_blocks", shape, args.repeats)
        dense = seconds_per_grad(None, shape, args.repeats)
        lines.append(f"| {name} | {shape[2]}x{shape[3]} | {1e3 * ours:.1f} | {1e3 * dense:.1f} | {dense / ours:.2f}x |")
        speedups.append(f"{name} {dense / ours:.2f}x")
        print(lines[-1], flush=True)
    write_result(Path(args.report), "Causal attention forward + backward", "python -m bench.attention", lines,
                 note=f"float32, one CPU device, blocks of {CAUSAL_BLOCK} query tokens, mean of {args.repeats} "
                      "after one warm-up",
                 headline=Headline("causal_blocks against XLA dense: " + ", ".join(speedups)))


if __name__ == "__main__":
    main()
