"""LoRA adapters: merging them into the base kernels (for export and inference)."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from mvlm_jax.models.config import LlamaConfig, LoraConfig, ModelConfig, VLMConfig

Params = dict[str, Any]


def _merge_tree(tree: Any, lora: LoraConfig) -> Any:
    if not isinstance(tree, dict):
        return tree
    if "lora_a" in tree:
        # kernel [..., in, out] += lora_a [..., in, r] @ lora_b [..., r, out] * alpha / r (leading [layers] axis).
        xp = np if isinstance(tree["kernel"], np.ndarray) else jnp
        delta = xp.einsum("...ir,...ro->...io", tree["lora_a"], tree["lora_b"]) * lora.scale
        merged = {key: value for key, value in tree.items() if key not in ("lora_a", "lora_b")}
        merged["kernel"] = tree["kernel"] + delta.astype(tree["kernel"].dtype)
        return merged
    return {key: _merge_tree(value, lora) for key, value in tree.items()}


def merge_lora(params: Params, config: ModelConfig) -> tuple[Params, ModelConfig]:
    """Fold every adapter into its kernel. Returns params without lora_a/lora_b and the config without
    LoRA; a model without adapters is returned unchanged. Works on an LLM or a VLM (its llm/ part)."""
    if isinstance(config, VLMConfig):
        llm_params, llm_config = merge_lora(params["llm"], config.llm)
        return {**params, "llm": llm_params}, dataclasses.replace(config, llm=llm_config)
    if not isinstance(config, LlamaConfig) or config.lora is None:
        return params, config
    return _merge_tree(params, config.lora), dataclasses.replace(config, lora=None)
