"""What the pinned llama.cpp computes from an mmproj we write, as a JAX model built from our own tower
(used by tests/test_llamacpp_parity.py only).

llama.cpp's LLaVA graph (tools/mtmd/models/llava.cpp) appends the class token after the patches, adds
position row i of the file to token i, runs the blocks and hands rows 1..n of the result to the projector.
A ViT without a mask is permutation-equivariant, so that equals our tower (class token first) with the
position rows permuted to what each token really gets, followed by a reordering of the outputs:
    llama.cpp's projector input = [patch 1, ..., patch n-1, class token].
The test suite compares llama.cpp's image embeddings with this model for every `cls` mode of the export.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mvlm_jax.export.mmproj_gguf import ClsMode, position_rows
from mvlm_jax.models.config import VisionConfig
from mvlm_jax.models.projectors import Projector
from mvlm_jax.models.vit import VisionTower


def llamacpp_tower_features(params: dict[str, Any], config: VisionConfig, images: jax.Array,
                            cls: ClsMode = "keep") -> jax.Array:
    """images: [batch, H, W, 3] normalised pixels -> the features llama.cpp feeds its projector
    [batch, num_patches, width], for an mmproj written with `cls` from tower `params`."""
    if not config.class_token:
        return VisionTower(config).apply({"params": params}, images)
    table = params["position_embedding"]
    if cls == "drop":
        dropped = dataclasses.replace(config, class_token=False)
        kept = {k: v for k, v in params.items() if k != "class_embedding"}
        return VisionTower(dropped).apply({"params": {**kept, "position_embedding": position_rows(table, "drop")}},
                                          images)
    written = position_rows(table, cls)  # row i goes to token i; the class token is token n (last)
    as_ours = jnp.concatenate([written[-1:], written[:-1]])  # our token order: class token first
    tower = VisionTower(dataclasses.replace(config, select_feature="cls_patch"))
    out = tower.apply({"params": {**params, "position_embedding": as_ours}}, images)  # [cls, patch 0 .. n-1]
    return jnp.concatenate([out[:, 2:], out[:, :1]], axis=1)


def llamacpp_image_embeddings(params: dict[str, Any], config: Any, images: jax.Array, cls: ClsMode = "keep") -> jax.Array:
    """VLM params and config -> the image embeddings llama.cpp's mtmd produces [batch, visual_tokens, embed]."""
    features = llamacpp_tower_features(params["vision"], config.vision, images, cls)
    return Projector(config.projector, config.llm.hidden_size).apply({"params": params["projector"]}, features)
