"""GGUF files as written: every tensor read back equals the checkpoint in llama.cpp's layout, the metadata
holds what llama.cpp reads (docs/EXPORT.md), the chat template renders our vicuna_v1 text, and bad input
or an existing output is refused without losing anything."""
import dataclasses

import gguf
import numpy as np
import pytest
import sentencepiece as spm

import gguf_helpers
from data_pipelines.templates import IMAGE_PLACEHOLDER, vicuna_v1_segments
from mvlm_jax.convert.families import clip_mapping, llama_mapping, projector_mapping
from mvlm_jax.convert.mapping import export_tensors
from mvlm_jax.export.__main__ import main as export_main
from mvlm_jax.export.gguf_file import export_gguf
from mvlm_jax.export.llm_gguf import MEDIA_MARKER, VICUNA_V1_JINJA, rope_pairs
from mvlm_jax.models.config import ProjectorConfig


def read(path):
    """{name: (type name, array in numpy order)} and {key: value} of a GGUF file."""
    reader = gguf.GGUFReader(path)
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        data = t.data if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) \
            else gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = (t.tensor_type.name, np.asarray(data, np.float32).reshape(shape))
    fields = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.contents()
        fields[name] = value
    return tensors, fields


def test_llm_file_holds_every_tensor_in_llamacpp_layout_and_the_metadata(tmp_path):
    config = gguf_helpers.llm_config(vocab_size=336)  # 16 more than the tokenizer: padded as [PADi]
    ckpt, params = gguf_helpers.checkpoint(tmp_path / "llm", config)
    (path,) = export_gguf(ckpt, tmp_path / "out", "f32")
    assert path.name == "llm-f32.gguf"
    tensors, fields = read(path)
    expected = dict(export_tensors(params, llama_mapping(config)))
    assert len(tensors) == len(expected) == 3 + 9 * config.num_layers
    for layer in range(config.num_layers):
        q = expected[f"model.layers.{layer}.self_attn.q_proj.weight"]
        k = expected[f"model.layers.{layer}.self_attn.k_proj.weight"]
        np.testing.assert_array_equal(tensors[f"blk.{layer}.attn_q.weight"][1], rope_pairs(q, 4))
        np.testing.assert_array_equal(tensors[f"blk.{layer}.attn_k.weight"][1], rope_pairs(k, 2))
        np.testing.assert_array_equal(tensors[f"blk.{layer}.ffn_down.weight"][1],
                                      expected[f"model.layers.{layer}.mlp.down_proj.weight"])
        np.testing.assert_array_equal(tensors[f"blk.{layer}.attn_norm.weight"][1],
                                      expected[f"model.layers.{layer}.input_layernorm.weight"])
    np.testing.assert_array_equal(tensors["token_embd.weight"][1], expected["model.embed_tokens.weight"])
    np.testing.assert_array_equal(tensors["output.weight"][1], expected["lm_head.weight"])
    # The permutation turns rotate-half pairs (i, i + d/2) into neighbours (2i, 2i + 1) within each head.
    np.testing.assert_array_equal(rope_pairs(np.arange(8)[:, None], 1)[:, 0], [0, 4, 1, 5, 2, 6, 3, 7])

    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 2 and fields["llama.embedding_length"] == 64
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.rope.dimension_count"] == 16 and fields["llama.feed_forward_length"] == 128
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    processor = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == config.vocab_size
    assert tokens[:processor.vocab_size()] == [processor.IdToPiece(i) for i in range(processor.vocab_size())]
    types = fields["tokenizer.ggml.token_type"]
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == types[2] == gguf.TokenType.CONTROL
    assert types[3] == gguf.TokenType.BYTE and types[-1] == gguf.TokenType.UNUSED and tokens[-1] == "[PAD335]"
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert fields["tokenizer.ggml.add_space_prefix"] is True  # the SentencePiece model's add_dummy_prefix
    assert fields["tokenizer.chat_template"] == VICUNA_V1_JINJA


def _llamacpp_render(messages: list[dict]) -> str:
    """The GGUF's chat template applied the way llama-cpp-python applies a model's Jinja template."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(VICUNA_V1_JINJA, eos_token="</s>", bos_token="<s>")(messages=messages).prompt


def _llamacpp_builtin(messages: list[dict]) -> int:
    """llama.cpp's own template engine without --jinja (llama_chat_apply_template): bytes written, < 0 refused."""
    import ctypes

    import llama_cpp

    chat = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in messages])
    buffer = ctypes.create_string_buffer(4096)
    return llama_cpp.llama_chat_apply_template(VICUNA_V1_JINJA.encode(), chat, len(messages), True, buffer, 4096)


def test_chat_template_renders_the_training_prompt_in_llamacpp():
    """Rendered by llama-cpp-python's Jinja path, the GGUF's template gives byte for byte the text our
    training template gives, also for an image in every place llama.cpp's tools put the marker; llama.cpp's
    built-in (non-Jinja) templates refuse it instead of guessing a different layout."""
    turns = [{"from": "human", "value": "What is red?"}, {"from": "gpt", "value": "A tomato."},
             {"from": "human", "value": "And green?"}]
    messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in turns]
    text = "".join(s.text for s in vicuna_v1_segments(turns, generation_prompt=True))
    assert _llamacpp_render(messages) == "<s>" + text
    with_image = "".join(s.text for s in vicuna_v1_segments(turns, has_image=True, generation_prompt=True))
    assert "<image>\nWhat is red?" in with_image
    # -p 'Q' (llama-mtmd-cli appends the marker), -p '<__media__>\nQ' (the explicit form), the marker first
    # (chat mode's /image, llama-cli), and -p '\nQ'
    for first in ["What is red?" + MEDIA_MARKER, MEDIA_MARKER + "\nWhat is red?", MEDIA_MARKER + "What is red?",
                  MEDIA_MARKER + "\nWhat is red?  ", "\nWhat is red?" + MEDIA_MARKER]:
        rendered = _llamacpp_render([{"role": "user", "content": first}] + messages[1:])
        assert rendered == "<s>" + with_image.replace(IMAGE_PLACEHOLDER, MEDIA_MARKER), first
    custom = _llamacpp_render([{"role": "system", "content": "Be brief."}] + messages[:1])
    assert custom == "<s>Be brief. USER: What is red? ASSISTANT:"
    assert _llamacpp_builtin(messages) < 0
    from llama_cpp import mtmd_cpp
    assert mtmd_cpp.mtmd_default_marker().decode() == MEDIA_MARKER


@pytest.mark.parametrize("projector, class_token, cls", [("ldp", True, "keep"), ("ldpv2", False, "keep"),
                                                         ("mlp2x_gelu", True, "drop"), ("ldp", True, "reorder")])
def test_mmproj_holds_the_run_blocks_and_projector_in_llamacpp_names(tmp_path, projector, class_token, cls):
    config = gguf_helpers.vlm_config(projector, class_token)
    ckpt, params = gguf_helpers.checkpoint(tmp_path / "vlm", config)
    paths = export_gguf(ckpt, tmp_path / "out", "f16", cls=cls)
    mmproj_name = "mmproj-vlm-f16.gguf" if cls == "keep" else f"mmproj-vlm-cls-{cls}-f16.gguf"
    assert [p.name for p in paths] == ["vlm-f16.gguf", mmproj_name]
    tensors, fields = read(paths[1])
    assert fields["general.name"] == mmproj_name.removesuffix("-f16.gguf")
    assert fields["clip.projector_type"] == {"ldp": "ldp", "ldpv2": "ldpv2", "mlp2x_gelu": "mlp"}[projector]
    # 3 source blocks, select_layer -2: exactly 2 written, and feature_layer makes llama.cpp run both.
    assert fields["clip.vision.block_count"] == 2 and list(fields["clip.vision.feature_layer"]) == [2]
    assert sorted({n.split(".")[2] for n in tensors if n.startswith("v.blk.")}) == ["0", "1"]
    assert not any(n.startswith("v.post_ln") for n in tensors)
    assert fields["clip.use_gelu"] is False and fields["clip.has_vision_encoder"] is True
    assert "clip.vision.image_grid_pinpoints" not in fields

    vision = dict(export_tensors(params["vision"], clip_mapping(config.vision, "")))
    table = vision["embeddings.position_embedding.weight"]
    written = {"keep": table, "reorder": np.concatenate([table[1:], table[:1]]), "drop": table[1:]}
    expected_positions = written[cls] if class_token else table
    np.testing.assert_allclose(tensors["v.position_embd.weight"][1], expected_positions, atol=2e-3, rtol=1e-3)
    assert ("v.class_embd" in tensors) == (class_token and cls != "drop")
    if "v.class_embd" in tensors:
        assert tensors["v.class_embd"][0] == "F32"
        np.testing.assert_array_equal(tensors["v.class_embd"][1], vision["embeddings.class_embedding"])
    np.testing.assert_allclose(tensors["v.blk.1.ffn_up.weight"][1], vision["encoder.layers.1.mlp.fc1.weight"],
                               atol=2e-3, rtol=1e-3)
    assert tensors["v.blk.1.ffn_up.bias"][0] == "F32" and tensors["v.patch_embd.weight"][0] == "F16"

    source = dict(export_tensors(params["projector"], projector_mapping(config.projector, "")))
    renamed = {"ldp": {"mm.model.mb_block.1.block.0.0.weight": "model.mb_block.1.block.0.0.weight",
                       "mm.model.mb_block.2.block.2.0.weight": "model.mb_block.2.block.2.0.weight",
                       "mm.model.mlp.3.bias": "model.mlp.3.bias"},
               "ldpv2": {"mm.model.mlp.0.weight": "mlp.mlp.0.weight", "mm.model.peg.0.weight": "peg.peg.0.weight",
                         "mm.model.peg.0.bias": "peg.peg.0.bias"},
               "mlp2x_gelu": {"mm.0.weight": "0.weight", "mm.2.bias": "2.bias"}}[projector]
    for ours, theirs in renamed.items():
        expected = source[theirs]
        if expected.ndim == 4 and expected.shape[2:] == (1, 1):
            expected = expected[:, :, 0, 0]
        np.testing.assert_allclose(tensors[ours][1], expected, atol=2e-3, rtol=1e-3)
    if projector == "ldp":
        assert tensors["mm.model.mb_block.1.block.0.0.weight"][0] == "F16"  # depthwise kernels must be F16
        assert tensors["mm.model.mb_block.1.block.2.0.weight"][1].ndim == 2  # 1x1 convs are matrices
    assert len(tensors) == len(vision) - int(class_token and cls == "drop") + len(source)


def test_existing_outputs_are_kept_and_bad_input_is_named(tmp_path, capsys):
    config = gguf_helpers.vlm_config("ldp")
    ckpt, _ = gguf_helpers.checkpoint(tmp_path / "vlm", config)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mmproj-vlm-f16.gguf").write_text("precious")
    assert export_main(["--ckpt", str(ckpt), "--out", str(out), "--type", "q8_0"]) == 1
    assert "mmproj-vlm-f16.gguf exists; pass --force" in capsys.readouterr().err
    assert (out / "mmproj-vlm-f16.gguf").read_text() == "precious" and not (out / "vlm-q8_0.gguf").exists()
    assert sorted(p.name for p in out.iterdir()) == ["mmproj-vlm-f16.gguf"]  # no partial files left
    assert export_main(["--ckpt", str(ckpt), "--out", str(out), "--type", "q8_0", "--force"]) == 0
    assert gguf.GGUFReader(out / "mmproj-vlm-f16.gguf").fields["clip.projector_type"].contents() == "ldp"
    assert sorted(p.name for p in out.iterdir()) == ["mmproj-vlm-f16.gguf", "vlm-q8_0.gguf"]
    # A --cls workaround goes beside the faithful export, without --force and without touching it.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert export_main(["--ckpt", str(ckpt), "--out", str(out), "--cls", "drop", "--mmproj-only"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["mmproj-vlm-cls-drop-f16.gguf", "mmproj-vlm-f16.gguf",
                                                     "vlm-q8_0.gguf"]
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in before.items())
    drop_tensors = gguf.GGUFReader(out / "mmproj-vlm-cls-drop-f16.gguf").tensors
    keep_tensors = gguf.GGUFReader(out / "mmproj-vlm-f16.gguf").tensors
    assert {t.name for t in keep_tensors} - {t.name for t in drop_tensors} == {"v.class_embd"}
    llm_ckpt, _ = gguf_helpers.checkpoint(tmp_path / "llm", config.llm)
    with pytest.raises(ValueError, match="text-only checkpoint has no mmproj"):
        export_gguf(llm_ckpt, tmp_path / "o3", "f16", mmproj_only=True)

    (ckpt / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.model: no SentencePiece model"):
        export_gguf(ckpt, tmp_path / "o2", "f16")

    variant = dataclasses.replace(config, projector=ProjectorConfig(type="ldp", front_mlp=False))
    ckpt2, _ = gguf_helpers.checkpoint(tmp_path / "variant", variant)
    with pytest.raises(ValueError, match="LDP variant .front_mlp=False"):
        export_gguf(ckpt2, tmp_path / "o3", "f16")
    small = dataclasses.replace(config, vision=dataclasses.replace(config.vision, image_size=224))
    ckpt3, _ = gguf_helpers.checkpoint(tmp_path / "small", small)
    with pytest.raises(ValueError, match="hard-codes a 24x24 patch grid; this tower has 16x16"):
        export_gguf(ckpt3, tmp_path / "o4", "f16")
    assert not (tmp_path / "o3").exists() or not any((tmp_path / "o3").iterdir())
