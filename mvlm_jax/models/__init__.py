"""Model zoo: MobileLLaMA, CLIP ViT, projectors and the MobileVLM composition."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvlm_jax.models.classifier import ImageClassifier
from mvlm_jax.models.config import ClassifierConfig, LlamaConfig, ModelConfig, VisionConfig, VLMConfig
from mvlm_jax.models.llama import MobileLLaMA
from mvlm_jax.models.vit import VisionTower
from mvlm_jax.models.vlm import MobileVLM


def build_model(config: ModelConfig) -> nn.Module:
    if isinstance(config, LlamaConfig):
        return MobileLLaMA(config)
    if isinstance(config, VisionConfig):
        return VisionTower(config)
    if isinstance(config, VLMConfig):
        return MobileVLM(config)
    if isinstance(config, ClassifierConfig):
        return ImageClassifier(config)
    raise TypeError(f"no model for config {type(config).__name__}")


def example_inputs(config: ModelConfig, batch: int = 1) -> tuple[Any, ...]:
    """Smallest inputs that create every parameter (for init and jax.eval_shape)."""
    if isinstance(config, LlamaConfig):
        return (jnp.zeros((batch, 8), jnp.int32),)
    if isinstance(config, (VisionConfig, ClassifierConfig)):
        size = config.image_size if isinstance(config, VisionConfig) else config.vision.image_size
        return (jnp.zeros((batch, size, size, 3), jnp.float32),)
    if isinstance(config, VLMConfig):
        size = config.vision.image_size
        tokens = jnp.zeros((batch, config.num_visual_tokens + 8), jnp.int32)
        return tokens, jnp.zeros((batch, 1, size, size, 3), jnp.float32), jnp.zeros((batch, 1), jnp.int32)
    raise TypeError(f"no model for config {type(config).__name__}")


def abstract_params(config: ModelConfig) -> Any:
    """Boxed (logically partitioned) parameter shapes, without allocating anything."""
    model = build_model(config)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs(config)))["params"]


def init_params(config: ModelConfig, rng: jax.Array) -> Any:
    """Unboxed float32 parameters on the default device (see sharding.init_sharded for a mesh)."""
    model = build_model(config)
    return nn.unbox(model.init(rng, *example_inputs(config))["params"])
