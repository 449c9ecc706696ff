"""Building blocks shared by the LLM, the vision tower and the projectors.

Parameters are created in float32 with logical axis names; computation happens in the module's dtype.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvlm_jax.models.config import LoraConfig

Axes = tuple[str | None, ...]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def param_with_axes(init: Callable, axes: Axes) -> Callable:
    return nn.with_logical_partitioning(init, axes)


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU (torch nn.GELU default)
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


class Linear(nn.Module):
    """y = x @ kernel (+ bias), with optional LoRA: + dropout(x) @ lora_a @ lora_b * alpha / rank.

    kernel: [in, out] with logical `axes`; lora_a: [in, rank]; lora_b: [rank, out], zero-initialised so
    that a fresh adapter leaves the output unchanged.
    """

    features: int
    axes: Axes
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    lora: LoraConfig | None = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    out_dtype: jnp.dtype | None = None  # e.g. float32 logits from bfloat16 inputs (accumulated in float32)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        in_features, lead = x.shape[-1], x.shape[:-1]
        kernel = self.param("kernel", param_with_axes(self.kernel_init, self.axes), (in_features, self.features))
        # Dots on 2-D [tokens, in] operands: with [batch, seq, in] the kernel gradient contracts two axes,
        # and XLA:CPU then materialises a transposed copy of the output gradient (half the MLP's backward).
        flat = x.reshape(-1, in_features)
        y = jnp.dot(flat.astype(self.dtype), kernel.astype(self.dtype), preferred_element_type=self.out_dtype)
        if self.use_bias:
            bias = self.param("bias", param_with_axes(nn.initializers.zeros, self.axes[-1:]), (self.features,))
            y = y + bias.astype(self.dtype)
        if self.lora is not None:
            lora_a = self.param("lora_a", param_with_axes(nn.initializers.he_uniform(), (self.axes[0], "lora_rank")),
                                (in_features, self.lora.rank))
            lora_b = self.param("lora_b", param_with_axes(nn.initializers.zeros, ("lora_rank", self.axes[-1])),
                                (self.lora.rank, self.features))
            lora_in = nn.Dropout(self.lora.dropout)(x, deterministic=deterministic).reshape(-1, in_features)
            update = jnp.dot(jnp.dot(lora_in.astype(self.dtype), lora_a.astype(self.dtype)), lora_b.astype(self.dtype))
            y = y + update * self.lora.scale
        return y.reshape(*lead, self.features)


class RMSNorm(nn.Module):
    """HF LLaMA RMSNorm: normalise in float32, cast back, then scale. x: [..., embed]."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", param_with_axes(nn.initializers.ones, ("norm",)), (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with float32 statistics (torch semantics; eps set by the caller)."""

    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", param_with_axes(nn.initializers.ones, ("norm",)), (features,))
        bias = self.param("bias", param_with_axes(nn.initializers.zeros, ("norm",)), (features,))
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (normed * scale + bias).astype(self.dtype)


def maybe_remat(block: type[nn.Module], policy: str) -> type[nn.Module]:
    if policy == "none":
        return block
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {policy!r}; expected one of {['none', *REMAT_POLICIES]}")
    return nn.remat(block, policy=REMAT_POLICIES[policy], prevent_cse=False)


def scan_layers(block: type[nn.Module], length: int, policy: str, broadcast_args: int,
                scanned_args: int = 0, unroll: int = 1) -> type[nn.Module]:
    """Stack `length` copies of `block` (signature (carry, *broadcast, *scanned) -> (carry, per-layer output))
    under nn.scan. The last `scanned_args` arguments are sliced along their leading [layers] axis (e.g. a
    KV cache; None passes through as an empty tree).

    Parameters get a leading [layers] axis with the logical name "layers". `unroll`: layers per loop iteration.
    """
    return nn.scan(maybe_remat(block, policy), variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   in_axes=(nn.broadcast,) * broadcast_args + (0,) * scanned_args, length=length, unroll=unroll,
                   metadata_params={nn.PARTITION_NAME: "layers"})
