"""RoPE linear position interpolation at demo scale: a model pretrained on rows of L tokens, evaluated on
held-out windows of 4L, per-token loss against position for three models:
  no scaling           the pretrained model as it is (positions L..4L were never trained)
  scaling, no tune     the same weights with rope_scaling_factor 4 (positions / 4)
  scaling + fine-tune  after the short fine-tune of experiments/pretrain.py's context=N recipe at 4L
  trained at 4L        reference: the same pretraining on rows of 4L (the same tokens per step), plain RoPE.
                       Later positions have more context, so even this model's loss over L..4L is below its
                       loss over 0..L; its ratio is what "no harm from the positions" looks like.

Data: the embedded corpus (demo split: train shards for both trainings, the val shards for evaluation).
Model: the demo MobileLLaMA (4 layers, width 128). Pretraining is experiments/pretrain.py:demo with rows of
L tokens and --steps steps; the fine-tune is mvlm_jax.train.recipes.long_context applied to that
pretraining config (rows of 4L, the same tokens per step, a third of the steps and of the peak learning
rate, init_from the pretrained model). Both run through the trainer (mvlm_jax.train.entry.train).

  python -m bench.rope_interpolation [--length 128] [--steps 300] [--workdir runs/bench-rope]

Writes docs/PERFORMANCE.md (bench.report) and docs/rope_interpolation.png; the numbers are quoted in
docs/TRAINING.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench.report import Headline, write_result
from mvlm_jax.models import build_model
from mvlm_jax.models.config import LlamaConfig, with_rope_scaling

ROOT = Path(__file__).resolve().parents[1]
FACTOR = 4


def _pretrain_config(length: int, steps: int, data: Path, paths: dict[str, str]) -> Any:
    sys.path.insert(0, str(ROOT))
    from experiments import pretrain

    c = pretrain.get_config("demo")
    c.data.seq_len = length
    c.data.embedded.root = str(data)
    with c.unlocked():  # what `python -m mvlm_jax.train` fills in for the embedded dataset
        c.data.shards, c.data.tokenizer = (paths["shards"],), paths["tokenizer"]
    c.train.total_steps = steps
    c.checkpoint.every = steps
    c.eval.every = 0  # evaluated here, per position
    return c


def _train(config: Any, workdir: Path) -> float | None:
    """Run (or reuse) one training; returns the seconds spent now, None when an earlier run's model is reused."""
    from mvlm_jax.train.entry import train

    if (workdir / "model").is_dir():
        return None
    started = time.perf_counter()
    train(config, str(workdir))
    return time.perf_counter() - started


def position_losses(config: LlamaConfig, params: Any, windows: np.ndarray, batch: int = 8) -> np.ndarray:
    """Mean next-token loss at each position over windows [n, length + 1] int32: float64 [length]."""
    model = build_model(config)

    @jax.jit
    def losses(tokens: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, tokens[:, :-1])
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]

    total = np.zeros(windows.shape[1] - 1)
    for start in range(0, len(windows) - len(windows) % batch, batch):  # whole batches: one compile
        total += np.asarray(losses(jnp.asarray(windows[start:start + batch]))).sum(0)
    return total / (len(windows) - len(windows) % batch)


def plot(curves: dict[str, np.ndarray], length: int, out: Path, smooth: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.6))
    for name, curve in curves.items():
        means = curve[:len(curve) // smooth * smooth].reshape(-1, smooth).mean(1)
        axis.plot(np.arange(len(means)) * smooth + smooth / 2, means, label=name, linewidth=1.2)
    axis.axvline(length, color="grey", linestyle="--", linewidth=0.8)
    axis.text(length, axis.get_ylim()[1], f" L = {length} (pretraining rows)", va="top", fontsize=8, color="grey")
    axis.set_xlabel(f"position (means over {smooth} positions)")
    axis.set_ylabel("held-out loss per token")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=128, help="L: the pretraining row length")
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps")
    parser.add_argument("--workdir", default="runs/bench-rope")
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    parser.add_argument("--plot", default="docs/rope_interpolation.png")
    args = parser.parse_args()
    from data_pipelines.embedded.prepare import prepare
    from data_pipelines.token_source import TokenWindows
    from mvlm_jax.checkpoint import load_model
    from mvlm_jax.train.recipes import long_context

    workdir = Path(args.workdir).absolute()
    length, long = args.length, FACTOR * args.length
    paths = prepare(workdir / "data", "demo", vocab_size=512, image_size=336)  # as experiments/pretrain.py:demo
    pretrain = _pretrain_config(length, args.steps, workdir / "data", paths)
    seconds = {"pretrain": _train(pretrain, workdir / "pretrain")}
    tune = long_context(_pretrain_config(length, args.steps, workdir / "data", paths), str(long),
                        str(workdir / "pretrain" / "model"))
    seconds["fine-tune"] = _train(tune, workdir / "tune")
    native = _pretrain_config(long, args.steps, workdir / "data", paths)
    native.train.batch_size = pretrain.train.batch_size * length // long
    seconds["reference at 4L"] = _train(native, workdir / "native")

    val = TokenWindows(paths["shards_val"], long)
    windows = np.stack([val[i] for i in range(len(val))])
    base_params, base = load_model(workdir / "pretrain" / "model")
    tuned_params, tuned = load_model(workdir / "tune" / "model")
    native_params, native_config = load_model(workdir / "native" / "model")
    scaled = with_rope_scaling(base, FACTOR, original=length)
    assert dataclasses.replace(tuned, attention_impl=scaled.attention_impl) == scaled, (tuned, scaled)
    tuned_name = f"scaling x{FACTOR} + fine-tune ({tune.train.total_steps} steps)"
    curves = {"no scaling": position_losses(base, base_params, windows),
              f"scaling x{FACTOR}, no fine-tune": position_losses(scaled, base_params, windows),
              tuned_name: position_losses(tuned, tuned_params, windows),
              "reference: trained at 4L": position_losses(native_config, native_params, windows)}
    plot(curves, length, Path(args.plot))

    rows = ["| model | loss 0..L | loss L..4L | L..4L / 0..L |", "|---|---|---|---|"]
    numbers = {}
    for name, curve in curves.items():
        short, far = curve[:length].mean(), curve[length:].mean()
        numbers[name] = {"loss_0_L": float(short), "loss_L_4L": float(far), "ratio": float(far / short)}
        rows.append(f"| {name} | {short:.3f} | {far:.3f} | {far / short:.3f} |")
        print(rows[-1], flush=True)
    (workdir / "numbers.json").write_text(json.dumps({"curves": numbers, "seconds": seconds}, indent=1))
    took = {name: "reused from an earlier run" if value is None else f"{value:.0f} s" for name, value in seconds.items()}
    tokens = {"pretrain": args.steps * pretrain.train.batch_size * length,
              "fine-tune": tune.train.total_steps * tune.train.batch_size * long}
    note = (f"demo MobileLLaMA on the embedded demo corpus; L = {length}, 4L = {long}; pretraining {args.steps} "
            f"steps x {pretrain.train.batch_size} rows of {length} ({tokens['pretrain']:,} tokens, "
            f"{took['pretrain']}), fine-tune {tune.train.total_steps} steps x {tune.train.batch_size} rows "
            f"of {long} ({tokens['fine-tune']:,} tokens, lr {tune.optim.learning_rate:g}, "
            f"{took['fine-tune']}); reference: {args.steps} steps x {native.train.batch_size} rows of "
            f"{long} from scratch ({took['reference at 4L']}); "
            f"loss over {len(windows) // 8 * 8} held-out windows of {long} (val split); plot: {args.plot}")
    ratios = [f"{numbers[name]['ratio']:.3f} {name}" for name in curves]
    tuned_ratio = numbers[tuned_name]["ratio"]
    write_result(Path(args.report), "RoPE position interpolation: loss against position",
                 "python -m bench.rope_interpolation", rows, note,
                 headline=Headline("loss L..4L / 0..L: " + ", ".join(ratios),
                                   goal="after the fine-tune, loss over L..4L at most 5 % above the loss over 0..L",
                                   met=tuned_ratio <= 1.05))


if __name__ == "__main__":
    main()
