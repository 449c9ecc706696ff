"""Peak memory of HF <-> checkpoint conversion at full MobileLLaMA size.

Writes a synthetic LlamaForCausalLM checkpoint of the chosen shape (bfloat16 safetensors shards, written
one tensor at a time), then runs `python -m mvlm_jax.convert.hf import` and `... export` as child
processes and reads each one's peak resident set size. The target: conversion never holds two full
copies, i.e. peak RSS / (float32 parameter bytes) stays well below 2.

  python -m bench.convert_memory --size 2.7b [--workdir DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from bench.report import Headline, write_result
from mvlm_jax.convert.families import llama_mapping
from mvlm_jax.convert.hf_config import llama_to_hf
from mvlm_jax.convert.mapping import flatten_paths
from mvlm_jax.convert.safetensors_io import write_sharded
from mvlm_jax.models import abstract_params
from mvlm_jax.models.config import LLAMA_PRESETS, LlamaConfig


def write_synthetic_hf(directory: Path, config: LlamaConfig) -> int:
    """A bf16 HF checkpoint with the shapes of `config`; returns its float32 parameter bytes."""
    import flax.linen as nn

    directory.mkdir(parents=True)
    shapes = {path: leaf.shape for path, leaf in flatten_paths(nn.unbox(abstract_params(config))).items()}
    rng = np.random.default_rng(0)

    def tensors():
        for entry in llama_mapping(config).entries:
            per_layer = shapes[entry.path][1:] if entry.layers else shapes[entry.path]
            for name in entry.source_names():
                source_shape = entry.to_source(np.broadcast_to(np.float32(0), per_layer)).shape
                yield name, rng.standard_normal(source_shape, dtype=np.float32).astype(ml_dtypes.bfloat16)

    write_sharded(directory, tensors(), max_shard_bytes=2 << 30)
    (directory / "config.json").write_text(json.dumps({**llama_to_hf(config), "torch_dtype": "bfloat16"}))
    return 4 * sum(int(np.prod(s)) for s in shapes.values())


def peak_rss_of(command: list[str]) -> tuple[float, float]:
    """Run `command` in a fresh interpreter wrapper; returns (peak RSS in bytes, seconds)."""
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return int(done.stdout.strip().splitlines()[-1]) * 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="2.7b", choices=sorted(LLAMA_PRESETS))
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch files")
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mvlm-convert-bench-"))
    config = LLAMA_PRESETS[args.size]
    try:
        start = time.perf_counter()
        f32_bytes = write_synthetic_hf(workdir / "hf", config)
        print(f"synthetic {args.size} checkpoint written in {time.perf_counter() - start:.0f} s")
        module = [sys.executable, "-m", "mvlm_jax.convert.hf"]
        import_rss, import_s = peak_rss_of(module + ["import", "--hf", str(workdir / "hf"), "--out", str(workdir / "ckpt")])
        export_rss, export_s = peak_rss_of(module + ["export", "--ckpt", str(workdir / "ckpt"), "--out",
                                                     str(workdir / "hf_out"), "--dtype", "bfloat16"])
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    gib = 1 << 30
    rows = [("import (bf16 safetensors -> f32 orbax)", import_rss, import_s),
            ("export (f32 orbax -> bf16 safetensors)", export_rss, export_s)]
    lines = [f"One float32 copy of the {args.size} parameters: {f32_bytes / gib:.2f} GiB "
             f"({f32_bytes // 4:,} parameters).", "",
             "| step | peak RSS (GiB) | peak / one f32 copy | wall time (s) |", "|---|---|---|---|"]
    lines += [f"| {name} | {rss / gib:.2f} | {rss / f32_bytes:.2f} | {secs:.0f} |" for name, rss, secs in rows]
    print("\n".join(lines))
    worst = max(import_rss, export_rss) / f32_bytes
    write_result(Path(args.report), f"Conversion peak memory, MobileLLaMA {args.size}",
                 f"python -m bench.convert_memory --size {args.size}", lines,
                 headline=Headline(f"peak {worst:.2f}x one f32 copy (import {import_rss / f32_bytes:.2f}x, export "
                                   f"{export_rss / f32_bytes:.2f}x)", "never two full copies: peak < 2x one f32 copy",
                                   worst < 2))


if __name__ == "__main__":
    main()
