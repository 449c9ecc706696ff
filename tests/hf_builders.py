"""Tiny random Hugging Face checkpoints, built locally with transformers (model hubs are unreachable)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.08) -> torch.nn.Module:
    """Random values everywhere (norm scales near 1), so a wrong mapping cannot pass by accident."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm = param.ndim == 1 and ("norm" in name or "layrnorm" in name)
            param.copy_(1.0 + 0.1 * noise if is_norm and name.endswith("weight") else std * noise)
    return module


def llama(directory: Path, seed: int = 0, **shape) -> transformers.LlamaForCausalLM:
    defaults = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                    rms_norm_eps=1e-6, tie_word_embeddings=False)
    config = transformers.LlamaConfig(**{**defaults, **shape})
    torch.manual_seed(seed)
    model = randomize_(transformers.LlamaForCausalLM(config), seed).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return model


def clip_vision(directory: Path | None, seed: int = 0, **shape) -> transformers.CLIPVisionModel:
    defaults = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                    image_size=48, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    config = transformers.CLIPVisionConfig(**{**defaults, **shape})
    torch.manual_seed(seed)
    model = randomize_(transformers.CLIPVisionModel(config), seed).eval()
    if directory is not None:
        model.save_pretrained(directory, safe_serialization=True)
    return model


def numpy_state(module: torch.nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
