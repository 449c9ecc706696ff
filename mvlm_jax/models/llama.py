"""MobileLLaMA: a LLaMA decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention), layers under nn.scan.

Parameter tree (L = layers, D = hidden, H = heads * head_dim, K = kv_heads * head_dim, F = intermediate):
  embed_tokens/embedding [vocab, D]
  layers/input_norm/scale [L, D]             layers/post_attn_norm/scale [L, D]
  layers/attn/{q_proj [L, D, H], k_proj, v_proj [L, D, K], o_proj [L, H, D]}/kernel
  layers/mlp/{gate_proj, up_proj [L, D, F], down_proj [L, F, D]}/kernel
  final_norm/scale [D]                       lm_head/kernel [D, vocab] (absent when tied)
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange

from mvlm_jax.models.config import LlamaConfig, LoraConfig
from mvlm_jax.models.attention import cached_attention, segment_attention
from mvlm_jax.models.layers import DTYPES, Linear, RMSNorm, param_with_axes, scan_layers


Rope = tuple[jax.Array, jax.Array]  # (cos, sin), each [batch, seq, 1, head_dim] float32


def rope_tables(positions: jax.Array, head_dim: int, theta: float, scaling_factor: float = 1.0) -> Rope:
    """cos and sin of HF's rotary angles for [batch, seq] positions, computed once per forward and shared
    by every layer (inside the layers they would be recomputed per layer, for queries and keys).
    scaling_factor > 1: linear position interpolation, the angles of position / factor (HF divides the
    inverse frequencies, llama.cpp multiplies the angle by 1 / factor: the same float32 products here)."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    if scaling_factor != 1.0:
        inv_freq = inv_freq / scaling_factor
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, seq, head_dim / 2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, rope: Rope) -> jax.Array:
    """Rotary embedding in HF's rotate_half layout. x: [batch, seq, heads, head_dim]; rope from rope_tables."""
    cos, sin = rope
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


KVCache = tuple[jax.Array, jax.Array]  # (key, value) [batch, kv_heads, max_len, head_dim]; stacked: [layers, ...]
CacheMasks = tuple[jax.Array, jax.Array]  # ([batch, max_len] cache slots to attend, [batch, 1, q, q] within the block)


def write_cache(cache: KVCache, keys: jax.Array, values: jax.Array, index: jax.Array) -> KVCache:
    """Write keys, values [layers, batch, q, kv_heads, head_dim] into the stacked cache [layers, batch,
    kv_heads, max_len, head_dim] at slots index .. index + q - 1 (in place under jit when the cache is
    donated or loop state)."""
    start = (0, 0, 0, index, 0)
    return tuple(jax.lax.dynamic_update_slice(stacked, jnp.swapaxes(new, 2, 3).astype(stacked.dtype), start)
                 for stacked, new in zip(cache, (keys, values)))


def _lora_for(config: LlamaConfig, name: str) -> LoraConfig | None:
    return config.lora if config.lora is not None and name in config.lora.targets else None


class Attention(nn.Module):
    config: LlamaConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | CacheMasks, rope: Rope,
                 cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
        """x: [batch, seq, embed]; mask: [batch, seq] int32 segment ids (causal within each segment, the
        kernel of config.attention_impl); rope: rope_tables of the [batch, seq] positions.

        With one layer's `cache` (generation; mask is then CacheMasks): attention runs over the cache
        and this block; the cache is only read, and this block's (key, value) is returned beside the
        output for the caller to write. A prefill (no earlier slot, CacheMasks (None, [batch, seq]
        segment ids)) runs the configured kernel too."""
        cfg = self.config
        dtype = DTYPES[cfg.dtype]
        head_dim = cfg.resolved_head_dim

        def project(name: str, features: int, axes: tuple[str, str], inputs: jax.Array) -> jax.Array:
            return Linear(features, axes, dtype=dtype, lora=_lora_for(cfg, name), name=name)(inputs, self.deterministic)

        query = project("q_proj", cfg.num_heads * head_dim, ("embed", "heads"), x)
        key = project("k_proj", cfg.kv_dim, ("embed", "kv_heads"), x)
        value = project("v_proj", cfg.kv_dim, ("embed", "kv_heads"), x)
        query, key, value = (rearrange(t, "b s (n h) -> b s n h", h=head_dim) for t in (query, key, value))
        query = apply_rope(query, rope)
        key = apply_rope(key, rope)
        query = nn.with_logical_constraint(query, ("batch", "length", "act_heads", None))
        if cache is None:
            out = segment_attention(query, key, value, mask, cfg.attention_impl)
        else:
            cache_mask, block_mask = mask
            if cache_mask is None and block_mask.ndim == 2:  # prefill: block_mask holds segment ids
                out = segment_attention(query, key, value, block_mask, cfg.attention_impl)
            else:
                out = cached_attention(query, key, value, *cache, cache_mask, block_mask)
            cache = (key, value)
        out = rearrange(out, "b s n h -> b s (n h)")
        out = project("o_proj", cfg.hidden_size, ("heads", "embed"), out)
        return out if cache is None else (out, cache)


class MLP(nn.Module):
    config: LlamaConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """SwiGLU: down(silu(gate(x)) * up(x)). x: [batch, seq, embed]."""
        cfg = self.config
        dtype = DTYPES[cfg.dtype]

        def project(name: str, features: int, axes: tuple[str, str], inputs: jax.Array) -> jax.Array:
            return Linear(features, axes, dtype=dtype, lora=_lora_for(cfg, name), name=name)(inputs, self.deterministic)

        gate = project("gate_proj", cfg.intermediate_size, ("embed", "mlp"), x)
        up = project("up_proj", cfg.intermediate_size, ("embed", "mlp"), x)
        hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        return project("down_proj", cfg.hidden_size, ("mlp", "embed"), hidden)


class DecoderBlock(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x))."""

    config: LlamaConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | CacheMasks, rope: Rope,
                 cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
        """Returns (x, None), or (x, this block's (key, value)) when given one layer's cache (see Attention)."""
        cfg = self.config
        dtype = DTYPES[cfg.dtype]
        normed = RMSNorm(cfg.rms_norm_eps, dtype, name="input_norm")(x)
        attn = Attention(cfg, self.deterministic, name="attn")
        if cache is None:
            x = x + attn(normed, mask, rope)
        else:
            attended, cache = attn(normed, mask, rope, cache)
            x = x + attended
        normed = RMSNorm(cfg.rms_norm_eps, dtype, name="post_attn_norm")(x)
        x = x + MLP(cfg, self.deterministic, name="mlp")(normed)
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed")), cache


class MobileLLaMA(nn.Module):
    """Decoder-only LM. Set `deterministic=False` (via `clone`) to enable LoRA dropout in training.
"""

    config: LlamaConfig
    deterministic: bool = True

    def setup(self) -> None:
        cfg = self.config
        dtype = DTYPES[cfg.dtype]
        self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=jnp.float32,
                                     embedding_init=param_with_axes(nn.initializers.normal(0.02), ("vocab", "embed")))
        stack = scan_layers(DecoderBlock, cfg.num_layers, cfg.remat_policy, broadcast_args=2, scanned_args=1,
                            unroll=cfg.scan_unroll)
        self.layers = stack(cfg, self.deterministic)
        self.final_norm = RMSNorm(cfg.rms_norm_eps, dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.vocab_size, ("embed", "vocab"), dtype=dtype, out_dtype=jnp.float32,
                                  kernel_init=nn.initializers.normal(0.02))

    def embed(self, tokens: jax.Array) -> jax.Array:
        """[batch, seq] int32 -> [batch, seq, embed] in the compute dtype."""
        return self.embed_tokens(tokens)

    def __call__(self, tokens: jax.Array | None, segment_ids: jax.Array | None = None,
                 positions: jax.Array | None = None, input_embeddings: jax.Array | None = None) -> jax.Array:
        """tokens: [batch, seq] int32 (or input_embeddings [batch, seq, embed]); segment_ids, positions:
        [batch, seq] int32, default one segment with positions 0..seq-1. Returns float32 logits
        [batch, seq, vocab]."""
        cfg = self.config
        x = self.embed(tokens) if input_embeddings is None else input_embeddings.astype(DTYPES[cfg.dtype])
        batch, seq = x.shape[:2]
        if segment_ids is None:
            segment_ids = jnp.ones((batch, seq), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        x, _ = self.layers(x, segment_ids, self.rope(positions), None)
        return self.head(x)

    def rope(self, positions: jax.Array) -> Rope:
        """rope_tables of [batch, seq] int32 positions, with the config's linear scaling."""
        cfg = self.config
        return rope_tables(positions, cfg.resolved_head_dim, cfg.rope_theta, cfg.rope_scaling_factor)

    def head(self, x: jax.Array) -> jax.Array:
        """Final norm and LM head: [batch, seq, embed] -> float32 logits [batch, seq, vocab]."""
        x = self.final_norm(x)
        if self.config.tie_word_embeddings:  # accumulate in float32, like the untied head
            table = self.embed_tokens.embedding.astype(x.dtype)
            return jnp.einsum("bsd,vd->bsv", x, table, preferred_element_type=jnp.float32)
        return self.lm_head(x)

    def forward_with_cache(self, tokens: jax.Array | None, positions: jax.Array, masks: CacheMasks, cache: KVCache,
                           cache_index: jax.Array, input_embeddings: jax.Array | None = None,
                           last_only: bool = False) -> tuple[jax.Array, KVCache]:
        """Incremental forward for generation (mvlm_jax.generate).

        tokens: [batch, q] int32 (or input_embeddings [batch, q, embed]), a block that goes to cache slots
        cache_index .. cache_index + q - 1 (cache_index: int32 scalar); positions: [batch, q] RoPE
        positions; masks: ([batch, max_len] bool, the earlier cache slots each row attends to, and [batch, 1,
        q, q] bool within the block; or, for a prefill into an empty cache, (None, [batch, q] int32 segment ids)); cache: (key, value) each [layers, batch, kv_heads,
        max_len, head_dim]. Returns (float32 logits [batch, q, vocab], or [batch, 1, vocab] for the last
        position when last_only; the cache with the block written).
        """
        x = self.embed(tokens) if input_embeddings is None else input_embeddings.astype(DTYPES[self.config.dtype])
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        x, (keys, values) = self.layers(x, masks, self.rope(positions), cache)
        return self.head(x[:, -1:] if last_only else x), write_cache(cache, keys, values, cache_index)


def count_params(config: LlamaConfig) -> int:
    """Closed-form parameter count (no LoRA)."""
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    q_dim = config.num_heads * config.resolved_head_dim
    per_layer = d * q_dim * 2 + d * config.kv_dim * 2 + 3 * d * f + 2 * d
    head = 0 if config.tie_word_embeddings else d * v
    return v * d + config.num_layers * per_layer + d + head
