"""Accelerator figures and the roofline bound of a compiled step (used by `mvlm_jax.train.plan`).

Per-chip peak dense bf16 FLOP/s, HBM capacity and HBM bandwidth, from the vendors' pages:
  v5e  https://cloud.google.com/tpu/docs/v5e   197 TFLOP/s, 16 GB HBM2, 819 GB/s
  v5p  https://cloud.google.com/tpu/docs/v5p   459 TFLOP/s, 95 GB HBM2e, 2765 GB/s
  v6e  https://cloud.google.com/tpu/docs/v6e   918 TFLOP/s, 32 GB HBM, 1640 GB/s
One JAX device is one chip on these three (v5p's two TensorCores form one megacore device).

The roofline bound of a step is max(FLOPs / peak, bytes accessed / bandwidth): no schedule runs faster,
so the model FLOPs over (that time x peak) is the highest MFU the compiled program can reach.
"""
from __future__ import annotations

import dataclasses

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bytes: float
    hbm_bytes_per_s: float
    source: str


CHIPS: dict[str, Chip] = {
    "v5e": Chip("TPU v5e", 197e12, 16 * GB, 819 * GB, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", 459e12, 95 * GB, 2765 * GB, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e", 918e12, 32 * GB, 1640 * GB, "https://cloud.google.com/tpu/docs/v6e"),
}


@dataclasses.dataclass(frozen=True)
class Roofline:
    compute_s: float  # compiled FLOPs / peak
    memory_s: float  # compiled bytes accessed / HBM bandwidth
    mfu_bound: float  # model FLOPs / (max(compute_s, memory_s) * peak)

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound_by(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "HBM bandwidth"


def roofline(chip: Chip, compiled_flops: float, bytes_accessed: float, model_flops: float) -> Roofline:
    """Per-device figures of one step: compiled FLOPs and bytes (cost analysis, whole step), and the
    model FLOPs MFU counts (6N per token plus attention, metrics.step_flops)."""
    compute_s, memory_s = compiled_flops / chip.peak_flops, bytes_accessed / chip.hbm_bytes_per_s
    return Roofline(compute_s, memory_s, model_flops / (max(compute_s, memory_s) * chip.peak_flops))


def whole_step_cost(base: dict[str, float], more_layers: dict[str, dict[str, float]],
                    stacks: dict[str, tuple[int, int]], loop_trips: int) -> dict[str, float]:
    """XLA's cost analysis counts the body of a while loop once, not once per trip. The step has loops:
    the micro-batch scan (`loop_trips` trips) around the forward and backward of each scanned layer
    stack. `base`: the cost of the program as compiled; `stacks[name]`: (layers, layers per scan
    iteration u); `more_layers[name]`: the cost of the same program with that stack's scan unrolled 2u
    (u layers more in the counted body).

    Whole step = loop_trips x (base + sum over stacks of (layers - u) x (more - base) / u). The
    optimizer update, outside the micro-batch loop, is then counted loop_trips times too (a few FLOPs per
    parameter against 6 x tokens per parameter for the gradients: well under 1 %).
    """
    out = {}
    for key in ("flops", "bytes accessed"):
        extra = sum((stacks[name][0] - stacks[name][1]) * (cost[key] - base[key]) / stacks[name][1]
                    for name, cost in more_layers.items())
        out[key] = loop_trips * (base[key] + extra)
    return out
