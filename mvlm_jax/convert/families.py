"""Each model family's checkpoint mapping (Hugging Face / MobileVLM tensor names <-> our parameter paths).

Used by HF import and export alike (and by the GGUF export for the layout of each tensor).
"""
from __future__ import annotations

import re

import numpy as np

from mvlm_jax.convert.mapping import Entry, Mapping, transpose
from mvlm_jax.models.config import LlamaConfig, ProjectorConfig, VisionConfig


def _conv_to_dense(array: np.ndarray) -> np.ndarray:
    """1x1 conv [out, in, 1, 1] -> kernel [in, out]."""
    return array[:, :, 0, 0].T


def _dense_to_conv(array: np.ndarray) -> np.ndarray:
    return array.T[:, :, None, None]


def _depthwise_to_flax(array: np.ndarray) -> np.ndarray:
    """torch depthwise [C, 1, kh, kw] -> flax [kh, kw, 1, C]."""
    return array.transpose(2, 3, 1, 0)


def _depthwise_to_torch(array: np.ndarray) -> np.ndarray:
    return array.transpose(3, 2, 0, 1)


def llama_mapping(config: LlamaConfig, prefix: str = "model.", head: str = "lm_head.weight") -> Mapping:
    """LlamaForCausalLM names. `prefix` is where the decoder sits (MobileVLM uses the same names)."""
    layers = config.num_layers
    layer = f"{prefix}layers.{{layer}}."
    entries = [Entry(("embed_tokens", "embedding"), f"{prefix}embed_tokens.weight")]
    for ours, theirs in [(("attn", "q_proj"), "self_attn.q_proj"), (("attn", "k_proj"), "self_attn.k_proj"),
                         (("attn", "v_proj"), "self_attn.v_proj"), (("attn", "o_proj"), "self_attn.o_proj"),
                         (("mlp", "gate_proj"), "mlp.gate_proj"), (("mlp", "up_proj"), "mlp.up_proj"),
                         (("mlp", "down_proj"), "mlp.down_proj")]:
        entries.append(Entry(("layers", *ours, "kernel"), f"{layer}{theirs}.weight", transpose, transpose, layers))
    entries += [Entry(("layers", "input_norm", "scale"), f"{layer}input_layernorm.weight", layers=layers),
                Entry(("layers", "post_attn_norm", "scale"), f"{layer}post_attention_layernorm.weight", layers=layers),
                Entry(("final_norm", "scale"), f"{prefix}norm.weight")]
    # Old checkpoints carry rotary caches; tied models may still store the (duplicate) head.
    ignored = [rf"{re.escape(prefix)}layers\.\d+\.self_attn\.rotary_emb\.inv_freq"]
    if config.tie_word_embeddings:
        ignored.append(re.escape(head))
    else:
        entries.append(Entry(("lm_head", "kernel"), head, transpose, transpose))
    return Mapping(tuple(entries), tuple(ignored))


def _patch_to_ours(array: np.ndarray) -> np.ndarray:
    """conv [C, 3, p, p] -> kernel [(p q c), C], matching the (row, col, channel) patch flattening."""
    return array.transpose(2, 3, 1, 0).reshape(-1, array.shape[0])


def _patch_to_source(patch_size: int):
    def convert(array: np.ndarray) -> np.ndarray:
        return array.reshape(patch_size, patch_size, 3, -1).transpose(3, 2, 0, 1)
    return convert


def clip_mapping(config: VisionConfig, prefix: str = "vision_model.") -> Mapping:
    """CLIPVisionModel / CLIPModel names. Blocks past the selected layer and post_layernorm are ignored."""
    layers = config.num_layers_run
    layer = f"{prefix}encoder.layers.{{layer}}."
    entries = [Entry(("patch_embedding", "kernel"), f"{prefix}embeddings.patch_embedding.weight",
                     _patch_to_ours, _patch_to_source(config.patch_size)),
               Entry(("position_embedding",), f"{prefix}embeddings.position_embedding.weight"),
               Entry(("pre_norm", "scale"), f"{prefix}pre_layrnorm.weight"),
               Entry(("pre_norm", "bias"), f"{prefix}pre_layrnorm.bias")]
    if config.class_token:
        entries.append(Entry(("class_embedding",), f"{prefix}embeddings.class_embedding"))
    if layers:  # select_layer 0 builds no block (the embeddings alone), so there are none to map
        for ours, theirs in [("attn_q_proj", "self_attn.q_proj"), ("attn_k_proj", "self_attn.k_proj"),
                             ("attn_v_proj", "self_attn.v_proj"), ("attn_out_proj", "self_attn.out_proj"),
                             ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")]:
            entries.append(Entry(("layers", ours, "kernel"), f"{layer}{theirs}.weight", transpose, transpose, layers))
            entries.append(Entry(("layers", ours, "bias"), f"{layer}{theirs}.bias", layers=layers))
        for norm in ("layer_norm1", "layer_norm2"):
            entries.append(Entry(("layers", norm, "scale"), f"{layer}{norm}.weight", layers=layers))
            entries.append(Entry(("layers", norm, "bias"), f"{layer}{norm}.bias", layers=layers))
    escaped = re.escape(prefix)
    unused_layers = "|".join(str(i) for i in range(layers, config.num_layers))
    ignored = [rf"{escaped}post_layernorm\.(weight|bias)", rf"{escaped}embeddings\.position_ids"]
    if unused_layers:
        ignored.append(rf"{escaped}encoder\.layers\.({unused_layers})\..*")
    return Mapping(tuple(entries), tuple(ignored))


def _mlp_entries(fc1: str, fc2: str) -> list[Entry]:
    return [Entry(("mlp", "fc1", "kernel"), f"{fc1}.weight", transpose, transpose),
            Entry(("mlp", "fc1", "bias"), f"{fc1}.bias"),
            Entry(("mlp", "fc2", "kernel"), f"{fc2}.weight", transpose, transpose),
            Entry(("mlp", "fc2", "bias"), f"{fc2}.bias")]


def projector_mapping(config: ProjectorConfig, prefix: str = "model.mm_projector.") -> Mapping:
    """MobileVLM names: mlp2x_gelu (`0`, `2`), ldpnet (`model.mlp.*`, `model.mb_block.*`), ldpnetv2
    (`mlp.mlp.*`, `peg.peg.0`). LDP variants without a front MLP or with other strides keep the same
    scheme (block k is `mb_block.{k+1}`)."""
    if config.type == "mlp2x_gelu":
        return Mapping(tuple(_mlp_entries(f"{prefix}0", f"{prefix}2")))
    if config.type == "ldpv2":
        return Mapping(tuple(_mlp_entries(f"{prefix}mlp.mlp.0", f"{prefix}mlp.mlp.2") + [
            Entry(("peg", "kernel"), f"{prefix}peg.peg.0.weight", _depthwise_to_flax, _depthwise_to_torch),
            Entry(("peg", "bias"), f"{prefix}peg.peg.0.bias")]))
    entries = _mlp_entries(f"{prefix}model.mlp.1", f"{prefix}model.mlp.3") if config.front_mlp else []
    for index in range(len(config.block_strides)):
        block, theirs = f"block_{index}", f"{prefix}model.mb_block.{index + 1}.block."
        entries += [
            Entry((block, "depthwise", "kernel"), f"{theirs}0.0.weight", _depthwise_to_flax, _depthwise_to_torch),
            Entry((block, "dw_norm", "scale"), f"{theirs}0.1.weight"),
            Entry((block, "dw_norm", "bias"), f"{theirs}0.1.bias"),
            Entry((block, "se_fc1", "kernel"), f"{theirs}1.fc1.weight", _conv_to_dense, _dense_to_conv),
            Entry((block, "se_fc1", "bias"), f"{theirs}1.fc1.bias"),
            Entry((block, "se_fc2", "kernel"), f"{theirs}1.fc2.weight", _conv_to_dense, _dense_to_conv),
            Entry((block, "se_fc2", "bias"), f"{theirs}1.fc2.bias"),
            Entry((block, "pointwise", "kernel"), f"{theirs}2.0.weight", _conv_to_dense, _dense_to_conv),
            Entry((block, "pw_norm", "scale"), f"{theirs}2.1.weight"),
            Entry((block, "pw_norm", "bias"), f"{theirs}2.1.bias")]
    return Mapping(tuple(entries))
