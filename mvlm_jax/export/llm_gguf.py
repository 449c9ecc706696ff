"""The language model as GGUF, arch `llama`: tensor names and layouts, hyper-parameters, the SentencePiece
vocabulary and the chat template, as llama.cpp's own converter writes them (ggml-org/llama.cpp
convert_hf_to_gguf.py and gguf-py/gguf/constants.py, the tree vendored by llama-cpp-python 0.3.36).

Tensors come from the Hugging Face export mapping (convert/families.py), renamed to llama.cpp's names.
Q and K rows are permuted per head: HF LLaMA rotates halves of a head, llama.cpp's LLAMA graph rotates
consecutive pairs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import gguf
import jax
import numpy as np
import sentencepiece as spm

from data_pipelines.templates import VICUNA_V1_SYSTEM
from mvlm_jax.convert.families import llama_mapping
from mvlm_jax.convert.mapping import export_plan
from mvlm_jax.export.gguf_io import FILE_TYPES, PlannedTensor, matrix_type, rename
from mvlm_jax.models.config import LlamaConfig

# HF LlamaForCausalLM name -> llama.cpp name (full match; \1 = layer).
_NAMES: list[tuple[str, str]] = [
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight", r"blk.\1.attn_q.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.weight", r"blk.\1.attn_k.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.weight", r"blk.\1.attn_v.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", r"blk.\1.attn_output.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"blk.\1.ffn_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"blk.\1.ffn_up.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"blk.\1.ffn_down.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"blk.\1.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blk.\1.ffn_norm.weight"),
]

# llama.cpp's image marker (mtmd_default_marker() in tools/mtmd/mtmd.cpp): where an image goes in a prompt.
MEDIA_MARKER = "<__media__>"


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def vicuna_v1_jinja(system: str = VICUNA_V1_SYSTEM, image: str = MEDIA_MARKER) -> str:
    """MobileVLM's vicuna_v1 conversation (data_pipelines/templates.py) as a Jinja chat template: an optional
    system message replaces the default one; user turns end with " ASSISTANT:", answers with </s>. A user
    message holding the image marker gets the layout training used, "<marker>\\n" + the rest stripped,
    wherever the marker was: llama-mtmd-cli appends the marker to a `-p` prompt that lacks one."""
    marker = _jinja_string(image)
    return (
        "{%- set system = " + _jinja_string(system) + " -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}"
        "{%- set messages = messages[1:] -%}{%- endif -%}"
        "{{- bos_token + system + ' ' -}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}{%- set content = message['content'] -%}"
        "{%- if " + marker + " in content -%}"
        "{%- set content = " + _jinja_string(image + "\n") + " + content.replace(" + marker + ", '').strip() -%}"
        "{%- endif -%}"
        "{{- 'USER: ' + content + ' ASSISTANT:' -}}"
        "{%- elif message['role'] == 'assistant' -%}{{- ' ' + message['content'] + eos_token -}}{%- endif -%}"
        "{%- endfor -%}")


VICUNA_V1_JINJA = vicuna_v1_jinja()


def rope_pairs(rows: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the rows of a Q/K weight [heads * head_dim, in] from rotate-half to interleaved pairs."""
    out = rows.shape[0]
    return rows.reshape(heads, 2, out // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def llm_tensors(params: dict[str, Any], config: LlamaConfig, wanted: gguf.GGMLQuantizationType) -> list[PlannedTensor]:
    """The planned tensors of the text model from an LLM parameter tree (no LoRA)."""
    planned = []
    for hf_name, shape, load in export_plan(params, llama_mapping(config)):
        name = rename(hf_name, _NAMES)
        heads = {"attn_q": config.num_heads, "attn_k": config.num_kv_heads}.get(name.split(".")[-2])
        if heads:
            load = (lambda load=load, heads=heads: rope_pairs(load(), heads))
        planned.append(PlannedTensor(name, tuple(shape), matrix_type(shape, wanted), load))
    return planned


def as_stored(llm: dict[str, Any], file_type: str) -> dict[str, Any]:
    """The LLM parameters (no LoRA: merge it first) as the GGUF file of `file_type` (f32, f16, q8_0: the
    types written here, not by llama.cpp's quantizer) holds them, back in the checkpoint's layout: each
    matrix encoded with the type llm_tensors gives it (blocks along the input dimension, GGUF's ne[0]) and
    decoded; vectors stay float32. JAX on these values computes what llama.cpp computes from the file, so
    the two runtimes can be compared without the quantization's own error."""
    if file_type not in ("f32", "f16", "q8_0"):
        raise ValueError(f"as_stored: {file_type!r} is written by llama.cpp's quantizer; expected f32, f16 or q8_0")
    wanted = FILE_TYPES[file_type][1]

    def stored(path, value):
        value, name = np.asarray(value, np.float32), jax.tree_util.keystr(path)
        if value.ndim < 2 or not name.endswith(("['kernel']", "['embedding']")):
            return value
        rows = value if name.endswith("['embedding']") else np.swapaxes(value, -1, -2)  # [..., out, in]
        # encoded by the export's own PlannedTensor.encode, decoded back to float32
        tensor = PlannedTensor(name, rows.shape, matrix_type(rows.shape, wanted), lambda: rows)
        encoded = tensor.encode()
        decoded = (encoded.astype(np.float32) if tensor.qtype in (gguf.GGMLQuantizationType.F32,
                                                                   gguf.GGMLQuantizationType.F16)
                   else gguf.quants.dequantize(encoded, tensor.qtype).reshape(rows.shape))
        return decoded if name.endswith("['embedding']") else np.swapaxes(decoded, -1, -2)

    return jax.tree_util.tree_map_with_path(stored, llm)


def _token_type(processor: spm.SentencePieceProcessor, token_id: int) -> gguf.TokenType:
    if processor.IsUnknown(token_id):
        return gguf.TokenType.UNKNOWN
    if processor.IsControl(token_id):
        return gguf.TokenType.CONTROL
    if processor.IsUnused(token_id):
        return gguf.TokenType.UNUSED
    if processor.IsByte(token_id):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def vocabulary(tokenizer: str | os.PathLike, vocab_size: int) -> tuple[list[bytes], list[float], list[int], int]:
    """(pieces, scores, token types, unk id) of a SentencePiece model, padded with [PADi] to the model's vocab."""
    processor = spm.SentencePieceProcessor(model_file=str(tokenizer))
    size = processor.vocab_size()
    if size > vocab_size:
        raise ValueError(f"{tokenizer}: {size} pieces, more than the model's vocab_size {vocab_size}")
    pieces = [processor.IdToPiece(i).encode("utf-8") for i in range(size)]
    scores = [float(processor.GetScore(i)) for i in range(size)]
    types = [int(_token_type(processor, i)) for i in range(size)]
    for i in range(size, vocab_size):
        pieces.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    return pieces, scores, types, processor.unk_id()


def adds_space_prefix(tokenizer: str | os.PathLike) -> bool:
    """The SentencePiece model's own add_dummy_prefix (LLaMA's: true), so llama.cpp tokenizes as it does."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(tokenizer).read_bytes())
    return bool(proto.normalizer_spec.add_dummy_prefix)


def _single_id(value: int | tuple[int, ...] | None) -> int | None:
    return value[0] if isinstance(value, tuple) else value


def llm_metadata(config: LlamaConfig, name: str, file_type: gguf.LlamaFileType,
                 tokenizer: str | os.PathLike) -> Callable[[gguf.GGUFWriter], None]:
    pieces, scores, types, unk_id = vocabulary(tokenizer, config.vocab_size)
    space_prefix = adds_space_prefix(tokenizer)

    def write(writer: gguf.GGUFWriter) -> None:
        writer.add_name(name)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_heads)
        writer.add_head_count_kv(config.num_kv_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_rope_dimension_count(config.resolved_head_dim)
        if config.rope_scaling_factor != 1.0:  # context_length above is already the extended one
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(config.rope_scaling_factor)
            writer.add_rope_scaling_orig_ctx_len(config.original_context)
        if config.head_dim is not None:
            writer.add_key_length(config.resolved_head_dim)
            writer.add_value_length(config.resolved_head_dim)
        writer.add_vocab_size(config.vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(pieces)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        for key, value in (("bos", config.bos_token_id), ("eos", config.eos_token_id), ("pad", config.pad_token_id)):
            if _single_id(value) is not None:
                getattr(writer, f"add_{key}_token_id")(_single_id(value))
        writer.add_unk_token_id(unk_id)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(space_prefix)
        writer.add_chat_template(VICUNA_V1_JINJA)
    return write
