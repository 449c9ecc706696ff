"""Training speed, measured in one run on this machine.

1. Train-step tokens/s of a small LLaMA: our jitted step (AdamW) against PyTorch with transformers
   (LlamaForCausalLM, torch.optim.AdamW), same shapes, same data, same CPU (goal: at least 1.25x), each in
   float32 and in bfloat16 compute with float32 parameters (ours: dtype bfloat16; torch: CPU autocast),
   and the ratio of each framework's best precision.
2. Compile time of the MobileLLaMA 1.4B train step on CPU from abstract inputs, 8-device mesh (goal <= 60 s).
3. With --mfu on an accelerator: MFU of the 1.4B train step at seq 2048 in bfloat16 (MaxText's definition).
4. The CPU's float32 GEMM ceiling (best of JAX and torch on a 2048^3 product) and each step's FLOPs per
   second against it: how much of the machine each framework uses, and how much the goal would need.

  python -m bench.train_throughput [--steps 20] [--mfu] [--quick]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.report import Headline, write_result

SHAPE = dict(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=704, seq=256, batch=8)
WARMUP = 3  # steps before timing (compile, allocator and cache warm-up)


def batches(steps: int):
    rng = np.random.default_rng(0)
    for _ in range(steps):
        tokens = rng.integers(0, SHAPE["vocab_size"], (SHAPE["batch"], SHAPE["seq"] + 1))
        yield tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32)


def timed_tokens_per_s(run_step, inputs: list, budget_s: float = 30.0) -> float:
    """Tokens/s of `run_step(batch)` (which returns once the step is done) over `inputs` after the first
    (compile / warm-up) ones, stopping early once `budget_s` is spent: a CPU without native bfloat16 takes
    seconds per emulated bf16 step, and a rate needs only a few of them."""
    for batch_data in inputs[:WARMUP]:
        run_step(batch_data)
    done, started = 0, time.perf_counter()
    for batch_data in inputs[WARMUP:]:
        run_step(batch_data)
        done += 1
        if time.perf_counter() - started > budget_s:
            break
    return done * SHAPE["batch"] * SHAPE["seq"] / (time.perf_counter() - started)


def gemm_gflops(framework: str, size: int = 2048, repeats: int = 5) -> float:
    """Best float32 GEMM rate of `framework` ("jax" or "torch") on a [size, size] x [size, size] product:
    the practical compute ceiling of this CPU, against which both train steps are measured."""
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
        product = jax.jit(jnp.matmul)
        run = lambda: product(a, a).block_until_ready()  # noqa: E731
    else:
        import torch

        a = torch.randn(size, size)
        run = lambda: a @ a  # noqa: E731
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def small_llama_config(dtype: str = "float32"):
    """Our LlamaConfig of SHAPE, the layer scan unrolled (same math, no loop: as torch runs the layers)."""
    from mvlm_jax.models.config import LlamaConfig

    return LlamaConfig(vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["hidden_size"],
                       num_layers=SHAPE["num_layers"], num_heads=SHAPE["num_heads"], num_kv_heads=SHAPE["num_heads"],
                       intermediate_size=SHAPE["intermediate_size"], max_position_embeddings=SHAPE["seq"],
                       scan_unroll=SHAPE["num_layers"], dtype=dtype)


def small_llama_flops_per_token() -> float:
    """Training FLOPs per token of the bench's small LLaMA (the trainer's MFU formula)."""
    from mvlm_jax.train.metrics import llm_flops_per_token

    return llm_flops_per_token(small_llama_config(), SHAPE["seq"])


def jax_tokens_per_s(steps: int, dtype: str = "float32", xla_defaults: bool = False) -> float:
    """Our train step with the trainer's loss and XLA options (or XLA's default CPU options when
    `xla_defaults`), over the small LLaMA with its layer scan unrolled (the trainer scans: scan_unroll 1)."""
    import jax
    import jax.numpy as jnp

    from mvlm_jax.models import build_model, init_params
    from mvlm_jax.train.losses import batch_forward, next_token_loss
    from mvlm_jax.train.optimizer import OptimConfig, make_optimizer, schedule
    from mvlm_jax.train.step import compiler_options, init_state, make_train_step

    config = small_llama_config(dtype)
    optim = OptimConfig(learning_rate=1e-4, warmup_steps=1, total_steps=1000)
    optimizer = make_optimizer(optim)
    state = init_state(init_params(config, jax.random.key(0)), {}, optimizer, jax.random.key(1))
    loss = next_token_loss(batch_forward(build_model(config), config))
    step = jax.jit(make_train_step(loss, optimizer, schedule(optim)), donate_argnums=0,
                   compiler_options=None if xla_defaults else compiler_options(jax.devices()[0].platform))
    seq, batch = SHAPE["seq"], SHAPE["batch"]
    fixed = {"loss_mask": jnp.ones((batch, seq)), "segment_ids": jnp.ones((batch, seq), jnp.int32),
             "positions": jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))}
    data = [{"tokens": jnp.asarray(t), "targets": jnp.asarray(y), **fixed} for t, y in batches(steps + WARMUP)]

    def run_step(batch_data):
        nonlocal state
        state, metrics = step(state, batch_data)
        jax.block_until_ready(metrics)

    return timed_tokens_per_s(run_step, data)


def torch_tokens_per_s(steps: int, dtype: str = "float32") -> float:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["hidden_size"],
                                      num_hidden_layers=SHAPE["num_layers"], num_attention_heads=SHAPE["num_heads"],
                                      intermediate_size=SHAPE["intermediate_size"],
                                      max_position_embeddings=SHAPE["seq"], attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    data = [(torch.from_numpy(t).long(), torch.from_numpy(y).long()) for t, y in batches(steps + WARMUP)]

    def step(tokens, targets):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = model(input_ids=tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return timed_tokens_per_s(lambda pair: step(*pair), data)


def compile_seconds_1_4b() -> float:
    done = subprocess.run([sys.executable, "-m", "mvlm_jax.train.plan", "--config", "experiments/pretrain.py:1.4b",
                           "--mesh", "data=1,fsdp=8,tensor=1", "--config.train.batch_size=64",
                           "--config.train.accumulation_steps=8"], capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return float(re.search(r"compiled in ([\d.]+) s", done.stdout).group(1))


def mfu_1_4b(steps: int, attention: str = "auto", rows_per_device: int = 8) -> tuple[float, float]:
    """(MFU, tokens/s) of the real 1.4B step at seq 2048, bf16, on the local accelerator, with the given
    attention kernel (bench.gpu_step runs cudnn and xla side by side)."""
    import jax

    from experiments import pretrain
    from mvlm_jax.train.metrics import peak_flops, step_flops
    from mvlm_jax.train.experiment import parse
    from mvlm_jax.train.run import abstract_batch, build_run

    config = pretrain.get_config("1.4b")
    config.train.update(batch_size=rows_per_device * jax.device_count(), accumulation_steps=1)
    with config.unlocked():
        config.mesh.update(data=1, fsdp=-1, tensor=1)
        config.model.attention = attention
    experiment = parse(config)
    run = build_run(experiment)
    import jax.numpy as jnp
    state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype, device=a.sharding), run.abstract_state)
    batch = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype, device=a.sharding), abstract_batch(experiment, run))
    for _ in range(2):
        state, metrics = run.step(state, batch)
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(steps):
        state, metrics = run.step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - started) / steps
    tokens = config.train.batch_size * config.data.seq_len
    peak = peak_flops(jax.devices()[0].device_kind) or float("nan")
    return step_flops(run.model_config, tokens, config.data.seq_len) / seconds / (peak * jax.device_count()), tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--mfu", action="store_true", help="also run the 1.4B step (needs an accelerator)")
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    parser.add_argument("--quick", action="store_true", help="only the small-LLaMA ratio; print it, report nothing")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # the machine is shared: other jobs' load slows torch's OpenMP threads most
    speeds = {(framework, dtype): measure(args.steps, dtype) for dtype in ("float32", "bfloat16")
              for framework, measure in (("ours", jax_tokens_per_s), ("torch", torch_tokens_per_s))}
    ours, theirs = (max(v for (f, _), v in speeds.items() if f == name) for name in ("ours", "torch"))
    xla_default = jax_tokens_per_s(args.steps, "float32", xla_defaults=True)
    gemm = max(gemm_gflops("jax"), gemm_gflops("torch"))
    per_token = small_llama_flops_per_token()
    utilisation = lambda tokens_per_s: tokens_per_s * per_token / (gemm * 1e9)  # noqa: E731
    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after the ratio runs"
    if args.quick:
        print(", ".join(f"{f} {d} {v:,.0f}" for (f, d), v in speeds.items())
              + f", ours float32 with XLA's default CPU options {xla_default:,.0f} tokens/s; best/best ratio "
              f"{ours / theirs:.2f}; GEMM ceiling {gemm:.1f} GFLOP/s, used {utilisation(ours):.0%} ours / "
              f"{utilisation(theirs):.0%} torch; {load}")
        return
    compile_s = compile_seconds_1_4b()
    shape = ", ".join(f"{k} {v}" for k, v in SHAPE.items())
    lines = ["| measurement | value |", "|---|---|",
             *(f"| train step, {'ours (JAX)' if f == 'ours' else 'PyTorch + transformers (sdpa)'}, {d} compute "
               f"| {v:,.0f} tokens/s |" for (f, d), v in speeds.items()),
             f"| train step, ours (JAX), float32 compute, XLA's default CPU options (YNNPACK dots) "
             f"| {xla_default:,.0f} tokens/s (ours with the trainer's options, layer scan unrolled: {speeds[('ours', 'float32')] / xla_default:.2f}x) |",
             f"| ratio ours / PyTorch, each at its best precision (goal >= 1.25) | {ours / theirs:.2f} |",
             f"| float32 GEMM ceiling of this CPU (best of JAX and torch, 2048^3) | {gemm:.1f} GFLOP/s |",
             f"| step FLOPs / time against that ceiling: ours, PyTorch ({per_token / 1e6:.1f} MFLOP per token) "
             f"| {utilisation(ours):.0%}, {utilisation(theirs):.0%} |",
             f"| the goal (1.25x PyTorch) needs | {utilisation(1.25 * theirs):.0%} of the ceiling |",
             f"| 1.4B train step compile, CPU, abstract inputs, 8-device fsdp mesh (goal <= 60 s) | {compile_s:.1f} s |"]
    if args.mfu:
        mfu, tokens = mfu_1_4b(args.steps)
        lines.append(f"| 1.4B train step, seq 2048, bf16: MFU | {100 * mfu:.1f} % ({tokens:,.0f} tokens/s) |")
    print("\n".join(lines))
    write_result(Path(args.report), "Training speed", "python -m bench.train_throughput" + (" --mfu" if args.mfu else ""),
                 lines, note=f"small LLaMA: {shape}; one CPU device for JAX (layer scan unrolled), "
                             f"torch with its default threads; {load} (2 cores).",
                 headline=Headline(f"{ours / theirs:.2f}x PyTorch (each at its best precision); 1.4B compile "
                                   f"{compile_s:.1f} s", ">= 1.25x PyTorch; compile <= 60 s",
                                   ours / theirs >= 1.25 and compile_s <= 60))


if __name__ == "__main__":
    main()
