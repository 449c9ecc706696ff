"""The vision tower and projector as an `mmproj` GGUF (arch `clip`) for llama.cpp's mtmd (what the
llama.cpp vendored by llama-cpp-python 0.3.36 reads: tools/mtmd/clip.cpp, clip-impl.h and models/llava.cpp;
the MobileVLM layout of tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py).

The pinned llama.cpp has two defects in its LLaVA-family vision graph; this writer handles both:
- Depth: without `clip.vision.feature_layer` it runs block_count - 1 blocks. We write exactly the blocks
  our tower runs (up to the selected layer) and feature_layer = [that count], so it runs all of them.
- Class token: it appends the class token AFTER the patches, gives token i position row i and feeds rows
  1..576 to the projector (patch 0 dropped, the class token last). Nothing in a file fixes that; `cls`
  picks what to write for a tower with a class token (see docs/EXPORT.md; tests/llamacpp_vision.py models the result):
    "keep"     the faithful file (class embedding, 577 position rows in HF order);
    "reorder"  position rows rotated so every token gets its own position (the ViT is then exact; the
               projector still sees the grid shifted by one with the class token last);
    "drop"     no class token, the 576 patch position rows: all patches, in place, correctly positioned;
               only the class token's part in attention is missing.
A tower trained without a class token (VisionConfig.class_token=False) is run exactly by llama.cpp.
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import gguf
import numpy as np

from data_pipelines.images import CLIP_MEAN, CLIP_STD
from mvlm_jax.convert.families import clip_mapping, projector_mapping
from mvlm_jax.convert.mapping import export_plan
from mvlm_jax.export.gguf_io import PlannedTensor, Q, rename
from mvlm_jax.models.config import VLMConfig

ClsMode = Literal["keep", "reorder", "drop"]
CLS_MODES: tuple[str, ...] = ("keep", "reorder", "drop")
PROJECTOR_TYPES = {"ldp": "ldp", "ldpv2": "ldpv2", "mlp2x_gelu": "mlp"}
LLAMACPP_GRID = 24  # llama.cpp's LDP / LDPv2 graphs hard-code a 24 x 24 patch grid (336 / 14)

_VISION_NAMES: list[tuple[str, str]] = [
    (r"embeddings\.patch_embedding\.weight", "v.patch_embd.weight"),
    (r"embeddings\.class_embedding", "v.class_embd"),
    (r"embeddings\.position_embedding\.weight", "v.position_embd.weight"),
    (r"pre_layrnorm\.(weight|bias)", r"v.pre_ln.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", r"v.blk.\1.attn_\2.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"v.blk.\1.attn_out.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"v.blk.\1.ln1.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"v.blk.\1.ln2.\2"),
    # gguf-py's own mapping (fc1 -> up, fc2 -> down); the legacy converter's swapped names also load.
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"v.blk.\1.ffn_up.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"v.blk.\1.ffn_down.\2"),
]
# MobileVLM state-dict names after "model.mm_projector." -> names after "mm.".
_PROJECTOR_NAMES: list[tuple[str, str]] = [
    (r"model\.(.*)", r"model.\1"),           # ldp: model.mlp.{1,3}, model.mb_block.K.block...
    (r"mlp\.mlp\.(\d)\.(.*)", r"model.mlp.\1.\2"),  # ldpv2
    (r"peg\.peg\.0\.(.*)", r"model.peg.0.\1"),
    (r"([02])\.(weight|bias)", r"\1.\2"),    # mlp2x_gelu
]


def _mmproj_type(name: str, shape: tuple[int, ...]) -> Q:
    """The legacy converter's rule: 2-D weights and 4-D kernels F16, the rest F32. Depthwise kernels must be
    F16 (the CPU backend has no F32-kernel x F16-im2col product); the class embedding must be F32."""
    if len(shape) == 4 or (len(shape) == 2 and name.endswith(".weight")):
        return Q.F16
    return Q.F32


def check_supported(config: VLMConfig) -> None:
    projector = config.projector
    if projector.type not in PROJECTOR_TYPES:
        raise ValueError(f"projector type {projector.type!r} has no llama.cpp graph")
    if projector.type == "ldp" and (not projector.front_mlp or tuple(projector.block_strides) != (1, 2)):
        raise ValueError("llama.cpp's LDP graph is the paper's default LDP (front MLP, blocks with strides 1, 2); "
                         f"this checkpoint's LDP variant (front_mlp={projector.front_mlp}, "
                         f"block_strides={tuple(projector.block_strides)}) cannot run there")
    grid = config.vision.image_size // config.vision.patch_size
    if projector.type != "mlp2x_gelu" and grid != LLAMACPP_GRID:
        raise ValueError(f"llama.cpp's {projector.type} graph hard-codes a {LLAMACPP_GRID}x{LLAMACPP_GRID} patch grid; "
                         f"this tower has {grid}x{grid} (image_size {config.vision.image_size}, "
                         f"patch_size {config.vision.patch_size})")
    if projector.type == "ldpv2" and projector.pool_side != LLAMACPP_GRID // 2:
        raise ValueError(f"llama.cpp's LDPv2 pools 2x2 to {LLAMACPP_GRID // 2}x{LLAMACPP_GRID // 2}; "
                         f"pool_side is {projector.pool_side}")
    if config.vision.select_feature != "patch":
        raise ValueError("llama.cpp feeds only patch tokens to the projector; select_feature must be 'patch'")


def position_rows(table: np.ndarray, cls: ClsMode) -> np.ndarray:
    """The position table to write, from HF's [1 + patches, width] (class row first)."""
    if cls == "keep":
        return table
    if cls == "reorder":  # token i (patch i) reads row i = HF row i + 1; the class token, last, reads HF row 0
        return np.concatenate([table[1:], table[:1]])
    return table[1:]


def mmproj_tensors(params: dict[str, Any], config: VLMConfig, cls: ClsMode) -> list[PlannedTensor]:
    """Planned tensors from a VLM parameter tree: the tower's blocks up to the selected layer, no post-LN."""
    has_cls = config.vision.class_token and cls != "drop"
    planned = []
    for hf_name, shape, load in export_plan(params["vision"], clip_mapping(config.vision, "")):
        name = rename(hf_name, _VISION_NAMES)
        if name == "v.class_embd" and not has_cls:
            continue
        if name == "v.position_embd.weight" and config.vision.class_token:
            load = (lambda load=load: position_rows(load(), cls))
            shape = (shape[0] - (0 if has_cls else 1), shape[1])
        planned.append(PlannedTensor(name, tuple(shape), _mmproj_type(name, tuple(shape)), load))
    for source_name, shape, load in export_plan(params["projector"], projector_mapping(config.projector, "")):
        name = rename(source_name, _PROJECTOR_NAMES, "mm.")
        if len(shape) == 4 and shape[2:] == (1, 1):  # 1x1 convs are plain matrices in the graph
            shape, load = shape[:2], (lambda load=load: load()[:, :, 0, 0])
        planned.append(PlannedTensor(name, tuple(shape), _mmproj_type(name, tuple(shape)), load))
    return planned


def mmproj_metadata(config: VLMConfig, name: str) -> Callable[[gguf.GGUFWriter], None]:
    vision = config.vision
    blocks = vision.num_layers_run

    def write(writer: gguf.GGUFWriter) -> None:
        writer.add_name(name)
        writer.add_description(f"MobileVLM vision tower ({blocks} blocks) and {config.projector.type} projector")
        writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
        writer.add_bool("clip.has_vision_encoder", True)
        writer.add_bool("clip.has_text_encoder", False)
        writer.add_bool("clip.has_llava_projector", True)
        writer.add_string("clip.projector_type", PROJECTOR_TYPES[config.projector.type])
        writer.add_uint32("clip.vision.image_size", vision.image_size)
        writer.add_uint32("clip.vision.patch_size", vision.patch_size)
        writer.add_uint32("clip.vision.embedding_length", vision.width)
        writer.add_uint32("clip.vision.feed_forward_length", vision.mlp_dim)
        writer.add_uint32("clip.vision.projection_dim", vision.width)  # required, unused by these graphs
        writer.add_uint32("clip.vision.attention.head_count", vision.num_heads)
        writer.add_float32("clip.vision.attention.layer_norm_epsilon", vision.layer_norm_eps)
        writer.add_uint32("clip.vision.block_count", blocks)
        # An explicit feature layer makes the graph run exactly `blocks` blocks (instead of blocks - 1).
        writer.add_array("clip.vision.feature_layer", [int(blocks)])  # int32 array
        writer.add_array("clip.vision.image_mean", [float(v) for v in CLIP_MEAN])
        writer.add_array("clip.vision.image_std", [float(v) for v in CLIP_STD])
        writer.add_bool("clip.use_gelu", vision.act in ("gelu", "gelu_tanh"))
    return write
