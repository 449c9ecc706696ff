"""Next-token choice from logits: greedy, temperature and top-p (nucleus) sampling, seeded.

Randomness is a pure function of (seed, step, row): the key of row r at generation step t is
fold_in(fold_in(key(seed), t), r), so a run is reproducible and does not depend on how many steps
ran before in another call.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to choose tokens. temperature 0 is greedy (argmax); top_p keeps the smallest set of most
    likely tokens whose probability reaches top_p (the most likely token is always kept, so top_p -> 0
    is greedy)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")


def step_keys(rng: jax.Array, step: jax.Array, batch: int) -> jax.Array:
    """Per-row keys [batch] for generation step `step` (int32 scalar)."""
    step_key = jax.random.fold_in(rng, step)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, jnp.arange(batch))


def top_p_sample(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """logits: [batch, vocab] float32; keys: [batch] PRNG keys. Returns [batch] int32 sampled ids."""
    scaled = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    order = jnp.argsort(-scaled, axis=-1, stable=True)  # ties: the lower id first, as argmax
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = (mass_before < top_p) | (jnp.arange(logits.shape[-1]) == 0)
    masked = jnp.where(keep, sorted_logits, -jnp.inf)
    choice = jax.vmap(jax.random.categorical)(keys, masked)
    return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


def choose_tokens(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """Greedy when temperature == 0 (no sort is run), else top_p_sample. logits: [batch, vocab] -> [batch]."""
    return jax.lax.cond(temperature > 0, lambda: top_p_sample(logits, keys, temperature, top_p),
                        lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32))
