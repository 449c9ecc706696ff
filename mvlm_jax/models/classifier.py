"""Image classifier for vision pretraining (paper Table 8's "classification" paradigm): vision tower ->
optional projector -> pooling head -> one logit per class.

The tower and projector are the VLM's own modules under the VLM's names (vision/, projector/), so a VLM
stage takes them over with `init_from=("vision=DIR", "projector=DIR", ...)`. The head is thrown away.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange

from mvlm_jax.models.config import ClassifierConfig
from mvlm_jax.models.layers import LayerNorm, Linear, param_with_axes
from mvlm_jax.models.projectors import Projector
from mvlm_jax.models.vit import VisionTower


class AttentionPool(nn.Module):
    """Multi-head attention pooling with learned queries (Lee et al. 2019, "Set Transformer", PMA;
    big_vision's MAP head without its MLP): tokens [batch, n, width] -> [batch, width] with one query
    (`queries` 0), or [batch, queries, width]."""

    heads: int
    queries: int = 0

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        width = tokens.shape[-1]
        if width % self.heads:
            raise ValueError(f"attention pooling: width {width} is not a multiple of head_heads {self.heads}")
        shape, axes = ((self.queries, width), (None, None)) if self.queries else ((width,), (None,))
        probe = self.param("probe", param_with_axes(nn.initializers.normal(0.02), axes), shape)
        q = rearrange(Linear(width, (None, None), use_bias=True, name="query")(probe), "... (h d) -> ... h d",
                      h=self.heads)  # [h, d], or [queries, h, d]
        k = rearrange(Linear(width, (None, None), use_bias=True, name="key")(tokens), "b n (h d) -> b h n d",
                      h=self.heads)
        v = rearrange(Linear(width, (None, None), use_bias=True, name="value")(tokens), "b n (h d) -> b h n d",
                      h=self.heads)
        # one query keeps its own contraction (the same program, so the same rounding, as before queries)
        scores, mix = ("qhd,bhnd->bqhn", "bqhn,bhnd->bqhd") if self.queries else ("hd,bhnd->bhn", "bhn,bhnd->bhd")
        weights = jax.nn.softmax(jnp.einsum(scores, q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype), axis=-1)
        pooled = rearrange(jnp.einsum(mix, weights, v), "... h d -> ... (h d)")
        return Linear(width, (None, None), use_bias=True, name="out")(pooled)


class ImageClassifier(nn.Module):
    config: ClassifierConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        """images: [batch, H, W, 3] normalised pixels -> float32 logits [batch, num_classes], or with the
        "tokens" head [batch, tokens, num_classes] (the projector's or tower's tokens, row-major), with the
        "cells" head [batch, head_cells ** 2, num_classes] (grid cells, row-major). With
        config.position_weight > 0: (those logits, position logits [batch, tokens, 2 * cells]: each token's
        row among `cells` rows, then its column; `cells` = config.position_grid)."""
        cfg = self.config
        tokens = VisionTower(cfg.vision, name="vision")(images)
        if cfg.projector is not None:
            tokens = Projector(cfg.projector, cfg.embed_dim, name="projector")(tokens)
        if cfg.head == "map":
            pooled = AttentionPool(cfg.head_heads, name="pool")(tokens.astype(jnp.float32))
        elif cfg.head == "gap":
            pooled = jnp.mean(tokens.astype(jnp.float32), axis=1)
        elif cfg.head == "cells":  # one query per grid cell, each classifying the objects centred in its cell
            if cfg.head_cells < 1:
                raise ValueError(f"classifier head_cells {cfg.head_cells}: expected at least 1 cell per side")
            pooled = AttentionPool(cfg.head_heads, cfg.head_cells ** 2, name="pool")(tokens.astype(jnp.float32))
        elif cfg.head == "tokens":  # one linear read-out per token: its label must be in the token itself
            pooled = tokens.astype(jnp.float32)
        else:
            raise ValueError(f"classifier head {cfg.head!r}; expected map, gap, tokens or cells")
        pooled = LayerNorm(name="norm")(pooled)
        logits = Linear(cfg.num_classes, (None, None), use_bias=True, name="classes")(pooled).astype(jnp.float32)
        if not cfg.position_weight:
            return logits
        # A linear read-out, as the LLM's first layer reads the tokens (after its norm): what it can find
        # here, attention can use.
        features = LayerNorm(name="position_norm")(tokens.astype(jnp.float32))
        positions = Linear(2 * cfg.position_grid, (None, None), use_bias=True, name="position")(features)
        return logits, positions.astype(jnp.float32)
