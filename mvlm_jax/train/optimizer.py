"""AdamW with a warmup-cosine schedule and global-norm clipping, over the trainable part only.

Weight decay applies to weight matrices (kernels, embeddings, convolution kernels, LoRA factors) and not to
biases or norm scales: HF Trainer's rule, which the SFT and VLM stages of the official code use
(the pretraining code's rule is not published; we use the same).

`lr_multipliers` gives parameter groups their own peak learning rate, as LLaVA's `mm_projector_lr`: a
parameter whose path matches a pattern (the first that matches) has its AdamW step, weight decay included,
multiplied by that factor; the schedule's shape is shared.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import jax
import optax

from mvlm_jax.sharding import path_of

NO_DECAY = (r"(^|/)bias$", r"(^|/)scale$", r"norm/", r"class_embedding$")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 3e-4  # peak
    min_learning_rate: float = 3e-5  # end of the cosine
    warmup_steps: int = 2000
    warmup_ratio: float = 0.0  # > 0: warmup is ceil(ratio * total_steps) instead of warmup_steps
    total_steps: int = 100_000
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip_norm: float = 1.0
    lr_multipliers: tuple[tuple[str, float], ...] = ()  # (path regex, factor) pairs


def schedule(config: OptimConfig) -> optax.Schedule:
    """Linear warmup from 0 to the peak, cosine down to the minimum at total_steps."""
    steps = math.ceil(config.warmup_ratio * config.total_steps) if config.warmup_ratio > 0 else config.warmup_steps
    warmup = min(steps, max(config.total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, max(config.total_steps, warmup + 1),
                                              config.min_learning_rate)


def decays(path: str) -> bool:
    return not any(re.search(pattern, path) for pattern in NO_DECAY)


def decay_mask(params):
    return jax.tree_util.tree_map_with_path(lambda key_path, _: decays(path_of(key_path)), params)


def multiplier(path: str, multipliers: Sequence[tuple[str, float]]) -> float:
    return next((float(f) for pattern, f in multipliers if re.search(pattern, path)), 1.0)


def scale_by_path(multipliers: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
    """Multiplies each update by the factor of the first pattern its parameter path matches (else 1)."""
    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(
            lambda key_path, u: u * multiplier(path_of(key_path), multipliers), updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
    """Over the (nested) trainable part: clip, then AdamW with decay on matrices only, then the per-group
    learning-rate factors (absent without any, so the optimizer state is the same as before them)."""
    for entry in config.lr_multipliers:
        if (not isinstance(entry, (tuple, list)) or len(entry) != 2 or not isinstance(entry[0], str)
                or not isinstance(entry[1], (int, float)) or entry[1] <= 0):
            raise ValueError(f"optim.lr_multipliers: {entry!r} is not a (path regex, positive factor) pair")
        re.compile(entry[0])  # a bad pattern fails here, naming itself, rather than inside jit
    parts = [optax.clip_by_global_norm(config.grad_clip_norm),
             optax.adamw(schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                         weight_decay=config.weight_decay, mask=decay_mask)]
    if config.lr_multipliers:
        parts.append(scale_by_path(config.lr_multipliers))
    return optax.chain(*parts)
