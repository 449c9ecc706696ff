"""Hugging Face config.json <-> our model configs, and which kind of checkpoint a directory holds."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mvlm_jax.convert.mapping import ConversionError
from mvlm_jax.models.config import LlamaConfig, ProjectorConfig, VisionConfig

# transformers' CLIPVisionConfig defaults, for keys a saved config leaves out.
CLIP_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "image_size": 224, "patch_size": 32,
                        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}

# Hub towers named by `mm_vision_tower` that MobileVLM and the paper's Table 7 use (HF vision configs).
KNOWN_TOWERS = {
    "openai/clip-vit-large-patch14-336": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                                          "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
    "openai/clip-vit-large-patch14": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                                      "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
    "openai/clip-vit-base-patch16": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                     "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
}

PROJECTOR_TYPES = {"ldpnet": "ldp", "ldp": "ldp", "ldpnetv2": "ldpv2", "ldpv2": "ldpv2", "mlp2x_gelu": "mlp2x_gelu"}


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from error
    except UnicodeDecodeError as error:
        raise ConversionError(f"{path}: not UTF-8 text ({error.reason})") from error


def detect_kind(config: dict[str, Any], where: Path) -> str:
    """'llm' (LlamaForCausalLM), 'vision' (CLIPVisionModel or CLIPModel) or 'vlm' (MobileVLM)."""
    model_type = config.get("model_type")
    if model_type == "mobilevlm" or "mm_projector_type" in config:
        return "vlm"
    if model_type == "llama":
        return "llm"
    if model_type in ("clip", "clip_vision_model"):
        return "vision"
    raise ConversionError(f"{where}: unknown model_type {model_type!r} (architectures {config.get('architectures')}); "
                          "expected llama, clip, clip_vision_model or mobilevlm")


def _require(config: dict[str, Any], key: str, where: Path) -> Any:
    if key not in config:
        raise ConversionError(f"{where}: missing key {key!r}")
    return config[key]


def llama_from_hf(config: dict[str, Any], where: Path) -> LlamaConfig:
    if config.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{where}: hidden_act {config['hidden_act']!r} is not supported (LLaMA uses silu)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ConversionError(f"{where}: attention_bias / mlp_bias are not supported (LLaMA has no biases)")
    rope = config.get("rope_parameters") or {}  # transformers >= 5 keeps rope_theta here
    factor = rope_scaling_from_hf(config, where)
    hidden, heads = _require(config, "hidden_size", where), _require(config, "num_attention_heads", where)
    head_dim = config.get("head_dim")
    llama = LlamaConfig(
        vocab_size=_require(config, "vocab_size", where), hidden_size=hidden,
        num_layers=_require(config, "num_hidden_layers", where), num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=None if head_dim in (None, hidden // heads) else head_dim,
        intermediate_size=_require(config, "intermediate_size", where),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        bos_token_id=config.get("bos_token_id"), pad_token_id=config.get("pad_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos := config.get("eos_token_id"), list) else eos)
    if factor == 1.0:
        return llama
    # HF's max_position_embeddings is the extended length; ours records the original one beside it
    original = config.get("original_max_position_embeddings") or round(llama.max_position_embeddings / factor)
    return dataclasses.replace(llama, rope_scaling_factor=factor, original_max_position_embeddings=original)


def rope_scaling_from_hf(config: dict[str, Any], where: Path) -> float:
    """The linear position-interpolation factor of a LLaMA config.json (1.0: plain RoPE). transformers 5
    writes `rope_parameters` {"rope_type", "factor", "rope_theta"}; older configs `rope_scaling` {"type" or
    "rope_type", "factor"}; when both are there transformers reads `rope_scaling`, and so do we."""
    for key in ("rope_scaling", "rope_parameters"):
        scaling = config.get(key)
        if not scaling:
            continue
        if not isinstance(scaling, dict):
            raise ConversionError(f"{where}: {key} {scaling!r} is not a dict")
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type == "default":
            return 1.0
        if rope_type != "linear":
            raise ConversionError(f"{where}: {key}.rope_type {rope_type!r} is not supported; only 'linear' "
                                  "position interpolation (or plain RoPE)")
        factor = scaling.get("factor")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor >= 1.0:
            raise ConversionError(f"{where}: {key}.factor {factor!r} must be a number >= 1 for linear RoPE scaling")
        return float(factor)
    return 1.0


def llama_to_hf(config: LlamaConfig, legacy_rope_scaling: bool = False) -> dict[str, Any]:
    """config.json of a LlamaForCausalLM; legacy_rope_scaling: the RoPE scaling as transformers < 4.43 reads
    it (the MobileVLM layout, whose official code pins transformers 4.33.1)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "head_dim": config.resolved_head_dim,
        "hidden_act": "silu", "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        **rope_scaling_to_hf(config, legacy_rope_scaling),
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id, "pad_token_id": config.pad_token_id,
        "eos_token_id": list(config.eos_token_id) if isinstance(config.eos_token_id, tuple) else config.eos_token_id,
        "torch_dtype": "float32"}


def rope_scaling_to_hf(config: LlamaConfig, legacy: bool = False) -> dict[str, Any]:
    """The config.json keys of the RoPE scaling: `rope_scaling` as transformers >= 4.43 reads it,
    `rope_parameters` as transformers 5 writes it, and the original length (a key transformers keeps but
    does not read for linear scaling). legacy: `rope_scaling` {"type", "factor"} alone, the only form
    transformers 4.33 accepts (exactly these two fields, factor a float > 1); transformers 5 reads it too."""
    if config.rope_scaling_factor == 1.0:
        return {"rope_scaling": None}
    if legacy:
        return {"rope_scaling": {"type": "linear", "factor": config.rope_scaling_factor},
                "original_max_position_embeddings": config.original_context}
    scaling = {"rope_type": "linear", "factor": config.rope_scaling_factor}
    return {"rope_scaling": scaling, "rope_parameters": {**scaling, "rope_theta": config.rope_theta},
            "original_max_position_embeddings": config.original_context}


def vision_from_hf(config: dict[str, Any], where: Path, select_layer: int = -2,
                   select_feature: str = "patch") -> VisionConfig:
    """From a CLIPVisionConfig dict, or a CLIPConfig dict (its vision_config is used)."""
    if config.get("model_type") == "clip":
        config = config.get("vision_config") or {}
    values = {**CLIP_VISION_DEFAULTS, **config}
    act = values["hidden_act"]
    if act not in ("quick_gelu", "gelu", "gelu_pytorch_tanh"):
        raise ConversionError(f"{where}: vision hidden_act {act!r} is not supported")
    if select_feature not in ("patch", "cls_patch"):
        raise ConversionError(f"{where}: mm_vision_select_feature {select_feature!r} is not supported")
    try:
        return VisionConfig(image_size=values["image_size"], patch_size=values["patch_size"],
                            width=values["hidden_size"], num_layers=values["num_hidden_layers"],
                            num_heads=values["num_attention_heads"], mlp_dim=values["intermediate_size"],
                            layer_norm_eps=values["layer_norm_eps"],
                            act="gelu_tanh" if act == "gelu_pytorch_tanh" else act,
                            select_layer=select_layer, select_feature=select_feature)
    except ValueError as error:
        raise ConversionError(f"{where}: {error}") from error


def vision_to_hf(config: VisionConfig) -> dict[str, Any]:
    return {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model",
            "hidden_size": config.width, "intermediate_size": config.mlp_dim,
            "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
            "image_size": config.image_size, "patch_size": config.patch_size, "num_channels": 3,
            "hidden_act": "gelu_pytorch_tanh" if config.act == "gelu_tanh" else config.act,
            "layer_norm_eps": config.layer_norm_eps}


# Our keys for what the official config cannot say (Table 9 LDP variants); official code ignores them.
LDP_KEYS = {"mm_ldp_front_mlp": "front_mlp", "mm_ldp_block_strides": "block_strides"}


def projector_from_hf(config: dict[str, Any], where: Path) -> ProjectorConfig:
    name = config.get("mm_projector_type", "linear")
    if name not in PROJECTOR_TYPES:
        raise ConversionError(f"{where}: mm_projector_type {name!r} is not supported; "
                              f"expected one of {sorted(PROJECTOR_TYPES)}")
    variant = {ours: config[key] for key, ours in LDP_KEYS.items() if key in config}
    if "block_strides" in variant:
        variant["block_strides"] = tuple(variant["block_strides"])
    return ProjectorConfig(type=PROJECTOR_TYPES[name], **(variant if PROJECTOR_TYPES[name] == "ldp" else {}))


def projector_to_hf(config: ProjectorConfig) -> dict[str, Any]:
    keys: dict[str, Any] = {"mm_projector_type": {"ldp": "ldpnet", "ldpv2": "ldpnetv2",
                                                  "mlp2x_gelu": "mlp2x_gelu"}[config.type]}
    if config.type == "ldp" and (not config.front_mlp or config.block_strides != (1, 2)):
        keys.update({key: getattr(config, ours) for key, ours in LDP_KEYS.items()})
    if config.type == "ldpv2" and config.pool_side != 12:
        raise ConversionError(f"ldpv2 with pool_side {config.pool_side} has no MobileVLM equivalent (it pools to 12x12)")
    return keys


def known_tower(config: VisionConfig) -> str | None:
    """The hub id whose architecture `config` has (shape, activation, eps, a class token), if any."""
    if not config.class_token:  # every hub CLIP tower has one
        return None
    hf = vision_to_hf(config)
    for name, shape in KNOWN_TOWERS.items():
        if all(hf[k] == v for k, v in {**CLIP_VISION_DEFAULTS, **shape}.items()):
            return name
    return None
