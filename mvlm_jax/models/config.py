"""Frozen, typed model configurations and the named presets.

Each model family gets its own dataclass; a checkpoint stores the dict form (`to_dict`) beside its
parameters so that it can be rebuilt without the experiment file that trained it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from data_pipelines.templates import IMAGE_TOKEN

RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
ComputeDtype = Literal["float32", "bfloat16", "float16"]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the LLM's linear layers (paper 4.4: r 128, alpha 256, every Linear)."""

    rank: int = 128
    alpha: float = 256.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    dropout: float = 0.05

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """MobileLLaMA / any LLaMA shape. Defaults are MobileLLaMA 1.4B (spec, Table 2)."""

    vocab_size: int = 32000
    hidden_size: int = 2048
    num_layers: int = 24
    num_heads: int = 16
    num_kv_heads: int = 16
    head_dim: int | None = None  # None: hidden_size // num_heads
    intermediate_size: int = 5632
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Linear position interpolation (Chen et al. 2023, arXiv 2306.15595; HF rope_type "linear"): RoPE
    # sees position / rope_scaling_factor, so a model trained on original_max_position_embeddings
    # positions runs up to factor x that many. 1.0 = plain RoPE. `with_rope_scaling` sets all three.
    rope_scaling_factor: float = 1.0
    max_position_embeddings: int = 2048  # the positions the model runs at (extended length when scaled)
    original_max_position_embeddings: int | None = None  # the training length before scaling; None: unscaled
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1  # kept for export (HF config, GGUF metadata); the model never reads them
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = 0
    dtype: ComputeDtype = "float32"  # compute dtype; parameters are always float32
    remat_policy: RematPolicy = "none"
    # Layers per iteration of the layer scan; num_layers unrolls it fully (no loop and no stacked
    # per-layer residual buffers: faster on CPU, slower to compile). Same math and parameter tree.
    scan_unroll: int = 1
    # Attention kernel (models/attention.py): "auto" picks splash on TPU, cudnn on CUDA GPUs, xla elsewhere;
    # "causal_blocks" is XLA per query block over the keys before it (faster on CPU). None means "auto".
    attention_impl: Literal["auto", "xla", "causal_blocks", "splash", "cudnn"] | None = "auto"
    lora: LoraConfig | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if not self.rope_scaling_factor >= 1.0:  # also refuses NaN
            raise ValueError(f"rope_scaling_factor {self.rope_scaling_factor} is below 1: linear position "
                             "interpolation only extends the context (1.0 = no scaling)")

    @property
    def original_context(self) -> int:
        """The context length the model was pretrained at (before any RoPE scaling)."""
        return self.original_max_position_embeddings or self.max_position_embeddings

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.resolved_head_dim

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT. Only the blocks up to `select_layer` are built: later ones never feed the projector."""

    image_size: int = 336
    patch_size: int = 14
    width: int = 1024
    num_layers: int = 24  # depth of the source model; see `num_layers_run`
    num_heads: int = 16
    mlp_dim: int = 4096
    layer_norm_eps: float = 1e-5
    act: Literal["quick_gelu", "gelu", "gelu_tanh"] = "quick_gelu"
    select_layer: int = -2  # HF hidden_states index: 0 is the pre-LN embedding output, i the output of block i
    class_token: bool = True  # False: a tower without a class token (no slot for it in position embeddings)
    select_feature: Literal["patch", "cls_patch"] = "patch"
    # Initial position embeddings: "normal" (CLIP's, std 0.02: for towers whose weights are then loaded)
    # or "sincos2d" (a 2-D sine-cosine table, as big_vision and MAE start a ViT trained from scratch: a
    # random tower keeps where each patch is; with std 0.02 the patch content drowns it).
    posemb_init: Literal["normal", "sincos2d"] = "normal"
    dtype: ComputeDtype = "float32"
    remat_policy: RematPolicy = "none"
    scan_unroll: int = 1  # blocks per iteration of the block scan, as LlamaConfig.scan_unroll

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 0 <= self.num_layers_run <= self.num_layers:
            raise ValueError(f"select_layer {self.select_layer} is outside 0..{self.num_layers} (or its negative)")
        if self.select_feature == "cls_patch" and not self.class_token:
            raise ValueError("select_feature 'cls_patch' needs a class token")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_positions(self) -> int:
        return self.num_patches + int(self.class_token)

    @property
    def num_layers_run(self) -> int:
        """Blocks whose output reaches the selected hidden state."""
        return self.select_layer if self.select_layer >= 0 else self.num_layers + 1 + self.select_layer

    @property
    def num_output_tokens(self) -> int:
        return self.num_patches + int(self.select_feature == "cls_patch")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """Vision-to-language projector.

    `mlp2x_gelu`: Linear -> GELU -> Linear (LLaVA-1.5). `ldp`: the LDP builder of the paper's Table 9:
    an optional front MLP ([PW]x2), then one MobileNetV3 inverted-residual block [DW(s) PW] per entry of
    `block_strides`. `ldpv2`: MLP, adaptive average pool to `pool_side` x `pool_side` (the official
    AdaptiveAvgPool2d((12, 12)); a 2x2 mean on the 24x24 grid), PEG (depthwise conv added to its input).
    """

    type: Literal["mlp2x_gelu", "ldp", "ldpv2"] = "ldp"
    front_mlp: bool = True
    block_strides: tuple[int, ...] = (1, 2)
    pool_side: int = 12
    dtype: ComputeDtype = "float32"


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    vision: VisionConfig
    projector: ProjectorConfig
    llm: LlamaConfig

    @property
    def num_visual_tokens(self) -> int:
        return projector_output_tokens(self.projector, self.vision.num_output_tokens)


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Image classification pretraining of a vision tower (paper Table 8's "classification" paradigm):
    the tower, optionally the projector into an LLM's width `embed_dim` (so that the VLM that starts from
    it receives tokens that already separate the classes), a pooling head over the tokens and one logit
    per class. `head`: "map" (attention pooling with one learned query, as big_vision's MAP head), "gap"
    (mean over tokens), "tokens" (no pooling: every output token gets its own logits, trained against the
    labels of the boxes it lies in: dense, grounded supervision) or "cells" (one learned query per cell of
    a `head_cells` x `head_cells` grid over the image, each trained against the labels of the boxes centred
    in its cell, as a YOLO grid cell answers for the objects centred in it: every query attends to all
    tokens, so the tokens must say where they are as well as what they show). `position_weight` > 0 adds a second
    objective: every output token predicts its own row and column of the token grid (or of a coarser grid
    of `position_cells` per side: 2 = which half) through a linear read-out (position_norm/, position/),
    weighted by it. Pooled labels do not depend on where an object is, so without it the projector is
    free to drop the positions the tower gives, which a VLM needs for "where" and "which is on the left"
    (docs/TRAINING.md). Parameters: vision/, projector/ (the VLM's
    names: `init_from` takes them from here), then the head's pool/ (map and cells), norm/ and classes/."""

    vision: VisionConfig
    projector: ProjectorConfig | None
    num_classes: int
    embed_dim: int = 0  # the projector's output width (an LLM's hidden size); 0 with no projector
    head: Literal["map", "gap", "tokens", "cells"] = "map"
    head_heads: int = 4
    head_cells: int = 2  # "cells": cells per side of the grid whose objects the head classifies
    position_weight: float = 0.0
    position_cells: int = 0  # the position objective's grid: cells per side (0: one per token)

    @property
    def feature_width(self) -> int:
        return self.embed_dim if self.projector is not None else self.vision.width

    @property
    def num_output_tokens(self) -> int:
        """Tokens the head sees: the projector's (the VLM's visual tokens) or the tower's."""
        tokens = self.vision.num_output_tokens
        return projector_output_tokens(self.projector, tokens) if self.projector is not None else tokens

    @property
    def token_grid(self) -> int:
        """Side of the square grid of output tokens that a "tokens" head classifies, or whose positions
        the position objective predicts (row-major)."""
        side = math.isqrt(self.num_output_tokens)
        if side * side != self.num_output_tokens:
            raise ValueError(f"classifier head 'tokens' and position_weight need a square grid of tokens, got "
                             f"{self.num_output_tokens} (a tower with a class token: select_feature='patch')")
        return side

    @property
    def label_key(self) -> str:
        """The batch key the head's logits are trained against: "labels" ([batch, classes]), or per token
        or per grid cell "token_labels" / "cell_labels" ([batch, label_rows, classes])."""
        return {"tokens": "token_labels", "cells": "cell_labels"}.get(self.head, "labels")

    @property
    def label_rows(self) -> int:
        """Rows of logits per image: one per token ("tokens"), one per grid cell ("cells"), else 0 (a single
        pooled row, [batch, classes])."""
        return {"tokens": self.num_output_tokens, "cells": self.head_cells ** 2}.get(self.head, 0)

    @property
    def position_grid(self) -> int:
        """Cells per side of the grid whose row and column each token predicts (position_weight > 0)."""
        cells = self.position_cells or self.token_grid
        if not 0 < cells <= self.token_grid:
            raise ValueError(f"classifier position_cells {self.position_cells}: expected 1 to {self.token_grid}")
        return cells


def with_rope_scaling(config: LlamaConfig, factor: float, original: int | None = None) -> LlamaConfig:
    """`config` extended by linear position interpolation: max_position_embeddings becomes
    round(factor x original), the original length (default: the config's own, before any earlier scaling)
    is kept in original_max_position_embeddings. factor 1.0 gives the unscaled config back."""
    original = original or config.original_context
    if not factor >= 1.0:
        raise ValueError(f"rope_scaling_factor {factor} is below 1: linear position interpolation only "
                         "extends the context (1.0 = no scaling)")
    if factor == 1.0:
        return dataclasses.replace(config, rope_scaling_factor=1.0, max_position_embeddings=original,
                                   original_max_position_embeddings=None)
    return dataclasses.replace(config, rope_scaling_factor=float(factor),
                               max_position_embeddings=round(factor * original),
                               original_max_position_embeddings=original)


def projector_output_tokens(config: ProjectorConfig, num_input_tokens: int) -> int:
    side = int(round(num_input_tokens**0.5))
    if config.type == "mlp2x_gelu":
        return num_input_tokens
    if side * side != num_input_tokens:
        raise ValueError(f"projector {config.type} needs a square token grid, got {num_input_tokens} tokens")
    if config.type == "ldpv2":
        return config.pool_side**2
    for stride in config.block_strides:
        side = (side + stride - 1) // stride  # 3x3 conv, padding 1
    return side * side


LLAMA_PRESETS: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                        intermediate_size=176, max_position_embeddings=512),
    # `make demo`: trains on the embedded data on a 2-core CPU in minutes.
    "demo": LlamaConfig(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4,
                        intermediate_size=352, max_position_embeddings=1024),
    "1.4b": LlamaConfig(),
    "2.7b": LlamaConfig(hidden_size=2560, num_layers=32, num_heads=32, num_kv_heads=32, intermediate_size=6912),
}

VISION_PRESETS: dict[str, VisionConfig] = {
    "tiny": VisionConfig(image_size=48, patch_size=8, width=32, num_layers=3, num_heads=4, mlp_dim=64),
    # The demo's tower: llama.cpp's 24x24 grid (336 / 14), no class token, so llama.cpp runs it exactly.
    # Trained here from scratch (the vision stage), it ends at its embeddings (select_layer 0): random
    # blocks mix every patch with all the others and bury the edges that tell shapes apart; its positions
    # start as a sine-cosine table, so every token says where it is (docs/TRAINING.md).
    "demo": VisionConfig(image_size=336, patch_size=14, width=64, num_layers=0, num_heads=4, mlp_dim=128,
                         class_token=False, select_layer=0, posemb_init="sincos2d"),
    "b16_224": VisionConfig(image_size=224, patch_size=16, width=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "l14_336": VisionConfig(),
}

# The paper's Table 9 rows as configurations of the one LDP builder.
PROJECTOR_PRESETS: dict[str, ProjectorConfig] = {
    "mlp2x_gelu": ProjectorConfig(type="mlp2x_gelu"),
    "ldp": ProjectorConfig(type="ldp"),
    "ldpv2": ProjectorConfig(type="ldpv2"),
    "ldp_no_front_pw": ProjectorConfig(type="ldp", front_mlp=False),  # [DW(s1) PW][DW(s2) PW]
    "ldp_downsample_first": ProjectorConfig(type="ldp", block_strides=(2, 1)),  # [DW(s2) PW][DW(s1) PW]
    "ldp_3_blocks": ProjectorConfig(type="ldp", block_strides=(1, 1, 1, 2)),  # [DW(s1) PW]x3 + [DW(s2) PW]
}

# Keys that older saved configs hold but are no longer fields, with the one value they ever had (dropped on
# load; another value is an unknown key). image_token_id was never read: prompts use templates.IMAGE_TOKEN.
_RETIRED = {("VLMConfig", "image_token_id"): IMAGE_TOKEN}
_NO_VALUE = object()
_NESTED = {"lora": LoraConfig, "vision": VisionConfig, "projector": ProjectorConfig, "llm": LlamaConfig}
_KINDS = {"llm": LlamaConfig, "vision": VisionConfig, "projector": ProjectorConfig, "vlm": VLMConfig,
          "classifier": ClassifierConfig}

ModelConfig = LlamaConfig | VisionConfig | ProjectorConfig | VLMConfig | ClassifierConfig


def kind_of(config: ModelConfig) -> str:
    return next(kind for kind, cls in _KINDS.items() if isinstance(config, cls))


def to_dict(config: ModelConfig) -> dict[str, Any]:
    """JSON-ready form, tagged with its kind."""
    return {"kind": kind_of(config), "config": dataclasses.asdict(config)}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if _RETIRED.get((cls.__name__, k), _NO_VALUE) != v}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}")
    kwargs = {}
    for name, value in values.items():
        if name in _NESTED and isinstance(value, dict):
            value = _build(_NESTED[name], value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def from_dict(data: dict[str, Any], where: str = "model config") -> ModelConfig:
    """Inverse of `to_dict`; names the offending key on bad input."""
    kind = data.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"{where}: unknown model kind {kind!r}; expected one of {sorted(_KINDS)}")
    return _build(_KINDS[kind], data.get("config", {}), where)
