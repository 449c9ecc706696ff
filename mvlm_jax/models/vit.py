"""CLIP ViT vision tower: patch embedding, class token, learned positions, pre-LN blocks with quick-GELU.

Only the first `num_layers_run` blocks exist: with select_layer -2 the last block and post_layernorm of
the source model never reach the projector, so they are neither built nor loaded.

Parameter tree (P = patch_size, C = width, L = blocks run, F = mlp_dim):
  patch_embedding/kernel [P*P*3, C] (rows ordered (row, col, channel))    class_embedding [C]
  position_embedding [num_positions, C]                                  pre_norm/{scale, bias} [C]
  layers/{layer_norm1, layer_norm2}/{scale, bias} [L, C]
  layers/{attn_q_proj, attn_k_proj, attn_v_proj, attn_out_proj}/{kernel [L, C, C], bias [L, C]}
  layers/{fc1 [L, C, F], fc2 [L, F, C]}/{kernel, bias}
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange

from mvlm_jax.models.config import VisionConfig
from mvlm_jax.models.attention import attention
from mvlm_jax.models.layers import ACTIVATIONS, DTYPES, LayerNorm, Linear, param_with_axes, scan_layers


class EncoderBlock(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, None]:
        """x: [batch, tokens, width] -> same shape."""
        cfg = self.config
        dtype = DTYPES[cfg.dtype]
        head_dim = cfg.width // cfg.num_heads

        def linear(name: str, features: int, axes: tuple[str, str], inputs: jax.Array) -> jax.Array:
            return Linear(features, axes, use_bias=True, dtype=dtype, name=name)(inputs)

        normed = LayerNorm(cfg.layer_norm_eps, dtype, name="layer_norm1")(x)
        with_heads = [rearrange(linear(f"attn_{n}_proj", cfg.width, ("embed", "heads"), normed), "b s (n h) -> b s n h",
                                h=head_dim) for n in ("q", "k", "v")]
        attended = rearrange(attention(*with_heads, mask=None), "b s n h -> b s (n h)")
        x = x + linear("attn_out_proj", cfg.width, ("heads", "embed"), attended)
        normed = LayerNorm(cfg.layer_norm_eps, dtype, name="layer_norm2")(x)
        hidden = ACTIVATIONS[cfg.act](linear("fc1", cfg.mlp_dim, ("embed", "mlp"), normed))
        x = x + linear("fc2", cfg.width, ("mlp", "embed"), hidden)
        return nn.with_logical_constraint(x, ("batch", "length", "act_embed")), None


def posemb_sincos2d(side: int, width: int, temperature: float = 10_000.0) -> jax.Array:
    """[side * side, width] 2-D sine-cosine position table, rows in patch order (row-major):
    width / 4 frequencies each for sin(x), cos(x), sin(y), cos(y) (big_vision's posemb_sincos_2d)."""
    if width % 4:
        raise ValueError(f"sincos2d position embeddings need a width divisible by 4, got {width}")
    y, x = jnp.meshgrid(jnp.arange(side), jnp.arange(side), indexing="ij")
    omega = 1.0 / temperature ** (jnp.arange(width // 4) / max(width // 4 - 1, 1))
    x = x.reshape(-1, 1) * omega[None]
    y = y.reshape(-1, 1) * omega[None]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)


def sincos2d_init(config: VisionConfig):
    """Initializer of position_embedding [num_positions, width]: the sincos2d table, a zero row first for
    the class token."""
    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        del key
        table = posemb_sincos2d(config.image_size // config.patch_size, config.width)
        if config.class_token:
            table = jnp.concatenate([jnp.zeros((1, config.width)), table])
        assert table.shape == tuple(shape), (table.shape, shape)
        return table.astype(dtype)

    return init


class VisionTower(nn.Module):
    config: VisionConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """images: [batch, H, W, 3] normalised pixels -> features [batch, num_output_tokens, width]
        (the selected hidden state, class token dropped for select_feature 'patch')."""
        cfg = self.config
        dtype = DTYPES[cfg.dtype]
        if images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(f"vision tower expects images [batch, {cfg.image_size}, {cfg.image_size}, 3], "
                             f"got {list(images.shape)}")
        patches = rearrange(images, "b (h p) (w q) c -> b (h w) (p q c)", p=cfg.patch_size, q=cfg.patch_size)
        x = Linear(cfg.width, (None, "embed"), dtype=dtype, name="patch_embedding")(patches)
        if cfg.class_token:
            class_embedding = self.param("class_embedding", param_with_axes(nn.initializers.normal(0.02), ("norm",)),
                                         (cfg.width,))
            class_tokens = jnp.broadcast_to(class_embedding.astype(dtype), (x.shape[0], 1, cfg.width))
            x = jnp.concatenate([class_tokens, x], axis=1)
        init = nn.initializers.normal(0.02) if cfg.posemb_init == "normal" else sincos2d_init(cfg)
        position_embedding = self.param("position_embedding", param_with_axes(init, (None, "embed")),
                                        (cfg.num_positions, cfg.width))
        x = x + position_embedding.astype(dtype)[None]
        x = LayerNorm(cfg.layer_norm_eps, dtype, name="pre_norm")(x)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        if cfg.num_layers_run:
            x, _ = scan_layers(EncoderBlock, cfg.num_layers_run, cfg.remat_policy, broadcast_args=0,
                               unroll=cfg.scan_unroll)(cfg, name="layers")(x)
        if cfg.class_token and cfg.select_feature == "patch":
            x = x[:, 1:]
        return x


def count_params(config: VisionConfig) -> int:
    """Closed-form count of the parameters that are built (blocks up to the selected layer)."""
    c, f = config.width, config.mlp_dim
    per_block = 4 * (c * c + c) + 2 * c * f + f + c + 4 * c
    embeddings = config.patch_size**2 * 3 * c + config.num_positions * c + c * int(config.class_token)
    return embeddings + 2 * c + config.num_layers_run * per_block
