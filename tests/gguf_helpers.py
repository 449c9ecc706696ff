"""Shared pieces of the GGUF / llama.cpp tests: a tokenizer, tiny checkpoints at llama.cpp's 24x24 grid."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from data_pipelines.images import CLIP_MEAN, CLIP_STD
from data_pipelines.tokenizer import train_tokenizer
from mvlm_jax.checkpoint import save_model
from jit_init import init_params
from mvlm_jax.models.config import PROJECTOR_PRESETS, LlamaConfig, VisionConfig, VLMConfig

TEXTS = [f"the cat number {i} sat on the mat and looked at {i * 7} dogs. USER: hello ASSISTANT: hi" for i in range(400)]


def tokenizer(directory: Path) -> Path:
    path = directory / "tok.model"
    if not path.exists():
        train_tokenizer(TEXTS, 320, path)
    return path


def llm_config(**overrides) -> LlamaConfig:
    values = dict(vocab_size=320, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=128, max_position_embeddings=512)
    return LlamaConfig(**{**values, **overrides})


def vlm_config(projector: str = "ldp", class_token: bool = True) -> VLMConfig:
    """llama.cpp's LDP graphs need the 24x24 grid of a 336 / 14 tower; the width can be tiny."""
    vision = VisionConfig(image_size=336, patch_size=14, width=32, num_layers=3, num_heads=4, mlp_dim=64,
                          class_token=class_token)
    return VLMConfig(vision=vision, projector=PROJECTOR_PRESETS[projector], llm=llm_config())


def random_params(config, seed: int = 0, scale: float = 1.0):
    """Random parameters with larger-than-init weights, so that every tensor visibly matters."""
    params = jax.tree.map(np.asarray, init_params(config, jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: (p * scale + 0.01 * rng.standard_normal(p.shape)).astype(np.float32)
                        if p.ndim >= 2 else p, params)


def checkpoint(directory: Path, config, seed: int = 0, scale: float = 1.0) -> tuple[Path, dict]:
    params = random_params(config, seed, scale)
    path = save_model(directory, params, config, tokenizer=tokenizer(directory.parent))
    return path, params


def image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 336x336 RGB image (llama.cpp copies it unchanged) and its CLIP-normalised pixels [1, 336, 336, 3]."""
    rgb = np.random.default_rng(seed).integers(0, 256, (336, 336, 3), dtype=np.uint8)
    pixels = (rgb.astype(np.float32) / 255 - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return rgb, pixels[None]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows."""
    return float(np.mean(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))
