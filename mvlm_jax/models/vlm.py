"""MobileVLM: vision tower -> projector -> image embeddings spliced into MobileLLaMA's token embeddings.

Three siblings with fixed parameter prefixes: vision/, projector/, llm/. No stage or freeze flags here:
what trains is decided by the trainer from parameter paths.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvlm_jax.models.config import VLMConfig
from mvlm_jax.models.llama import MobileLLaMA
from mvlm_jax.models.projectors import Projector
from mvlm_jax.models.vit import VisionTower


def place_image_embeddings(text_embeddings: jax.Array, image_embeddings: jax.Array,
                           image_slots: jax.Array) -> jax.Array:
    """Overwrite rows slot .. slot + n - 1 of each sequence with that image's embeddings.

    text_embeddings: [batch, seq, embed]; image_embeddings: [batch, images, n, embed];
    image_slots: [batch, images] int32 start index, -1 for no image. Static shapes, one scatter; rows that
    would fall past the sequence end are dropped.
    """
    batch, seq = text_embeddings.shape[:2]
    num_tokens = image_embeddings.shape[2]
    rows = image_slots[..., None] + jnp.arange(num_tokens, dtype=image_slots.dtype)  # [batch, images, n]
    rows = jnp.where(image_slots[..., None] >= 0, rows, seq)  # out of range -> dropped
    batch_index = jnp.arange(batch)[:, None, None]
    return text_embeddings.at[batch_index, rows].set(image_embeddings.astype(text_embeddings.dtype), mode="drop")


class MobileVLM(nn.Module):
    config: VLMConfig
    deterministic: bool = True

    def setup(self) -> None:
        cfg = self.config
        self.vision = VisionTower(cfg.vision)
        self.projector = Projector(cfg.projector, cfg.llm.hidden_size)
        self.llm = MobileLLaMA(cfg.llm, self.deterministic)

    def encode_images(self, images: jax.Array) -> jax.Array:
        """images: [batch, images, H, W, 3] -> [batch, images, num_visual_tokens, embed]."""
        batch, per_row = images.shape[:2]
        features = self.projector(self.vision(images.reshape(batch * per_row, *images.shape[2:])))
        return features.reshape(batch, per_row, *features.shape[1:])

    def __call__(self, tokens: jax.Array, images: jax.Array | None = None, image_slots: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, positions: jax.Array | None = None) -> jax.Array:
        """tokens: [batch, seq] int32 with num_visual_tokens placeholder positions per image;
        images: [batch, images, H, W, 3]; image_slots: [batch, images] (-1: none).
        Returns float32 logits [batch, seq, vocab]."""
        embeddings = self.llm.embed(tokens)
        if images is not None:
            if image_slots is None:
                raise ValueError("images given without image_slots")
            embeddings = place_image_embeddings(embeddings, self.encode_images(images), image_slots)
        return self.llm(None, segment_ids, positions, input_embeddings=embeddings)
