"""Forward + backward of the LDP projectors: our depthwise-convolution backward against JAX's autodiff of
the same forward, measured in one run (the VLM stages train the projector on every step).

Shapes: the demo's (16 images of 24x24 patches, vision width 64, LLM width 128) and MobileVLM 1.7B's
(4 images, CLIP width 1024, LLM width 2048). Both in float32 on one CPU device, compiled as the trainer
compiles its step (train/step.py CPU_COMPILER_OPTIONS).

  python -m bench.projector_backward [--repeats 10]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp

from bench.report import Headline, mean_seconds, write_result
from mvlm_jax.models import projectors
from mvlm_jax.models.config import PROJECTOR_PRESETS
from mvlm_jax.train.step import CPU_COMPILER_OPTIONS

SHAPES = {"demo": (16, 64, 128), "1.7b": (4, 1024, 2048)}  # images, vision width, LLM width; 576 tokens each


def seconds_per_grad(kind: str, shape: str, repeats: int) -> float:
    """Seconds of one jitted forward + backward (gradients of params and input) of projector `kind`."""
    images, vision, hidden = SHAPES[shape]
    model = projectors.Projector(PROJECTOR_PRESETS[kind], hidden)
    features = jax.random.normal(jax.random.key(0), (images, 576, vision))
    params = model.init(jax.random.key(1), features)["params"]
    weights = jax.random.normal(jax.random.key(2), jax.eval_shape(lambda: model.apply({"params": params}, features)).shape)
    loss = lambda p, f: jnp.sum(model.apply({"params": p}, f) * weights)  # noqa: E731
    step = jax.jit(jax.grad(loss, (0, 1)), compiler_options=CPU_COMPILER_OPTIONS)
    return mean_seconds(step, params, features, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--report", default="docs/PERFORMANCE.md")
    args = parser.parse_args()
    lines = ["| projector | shape | ours (ms) | JAX autodiff (ms) | speed-up |", "|---|---|---|---|---|"]
    speedups = []
    for kind in ("ldp", "ldpv2"):
        for shape in SHAPES:
            ours = seconds_per_grad(kind, shape, args.repeats)
            with mock.patch.object(projectors, "depthwise_conv3x3", projectors.depthwise_conv3x3_forward):
                theirs = seconds_per_grad(kind, shape, args.repeats)
            lines.append(f"| {kind} | {shape} | {1e3 * ours:.1f} | {1e3 * theirs:.1f} | {theirs / ours:.2f}x |")
            speedups.append(f"{kind} {shape} {theirs / ours:.2f}x")
            print(lines[-1], flush=True)
    write_result(Path(args.report), "Projector forward + backward", "python -m bench.projector_backward", lines,
                 note=f"float32, one CPU device, mean of {args.repeats} after one warm-up; shapes "
                      + ", ".join(f"{k}: {v[0]} images x 576 tokens, width {v[1]} -> {v[2]}" for k, v in SHAPES.items()),
                 headline=Headline("ours against JAX autodiff: " + ", ".join(speedups)))


if __name__ == "__main__":
    main()
