"""The prepared GPU check: the MobileLLaMA 1.4B train step at seq 2048 in bfloat16 (remat dots_no_batch,
AdamW, as experiments/pretrain.py:1.4b), cuDNN flash attention beside XLA's attention, measured in one run:
MFU (MaxText's definition, metrics.step_flops over the device's dense bf16 peak) and tokens/s.
Goal: at least 55 % MFU (the paper's run is about 49 % on A100s). Needs a CUDA GPU.

  python -m bench.gpu_step [--steps 10] [--rows 8]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.report import Headline, write_result
from bench.train_throughput import mfu_1_4b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=8, help="rows of 2048 tokens per device")
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    args = parser.parse_args()
    import jax

    if jax.default_backend() != "gpu":
        raise SystemExit(f"bench.gpu_step needs a CUDA GPU; this machine's JAX backend is {jax.default_backend()}")
    lines = ["| attention | MFU | tokens/s | vs xla |", "|---|---|---|---|"]
    results = {kernel: mfu_1_4b(args.steps, kernel, args.rows) for kernel in ("cudnn", "xla")}
    for kernel, (mfu, tokens) in results.items():
        lines.append(f"| {kernel} | {100 * mfu:.1f} % | {tokens:,.0f} | {tokens / results['xla'][1]:.2f}x |")
    print("\n".join(lines))
    best = max(mfu for mfu, _ in results.values())
    write_result(Path(args.report), "GPU train step: MobileLLaMA 1.4B, seq 2048, bfloat16",
                 f"python -m bench.gpu_step --steps {args.steps} --rows {args.rows}", lines,
                 note=f"{args.rows} rows per device, one segment per row, {args.steps} steps after two warm-up steps",
                 headline=Headline(f"MFU {100 * best:.1f} % (best attention kernel)", ">= 55 % MFU", best >= 0.55))


if __name__ == "__main__":
    main()
