"""Exported GGUF files run in stock llama.cpp (llama-cpp-python 0.3.36) with proven parity (also with
linear RoPE scaling, past the trained length).

Tolerances: f32 logits within 1e-3 of JAX; f16 within 1 % and q8_0 within 10 % of the largest logit with
top-1 agreement measured; image embeddings within 0.5 % of the largest value (llama.cpp evaluates GELU
with the tanh formula through an f16 table, and stores the ViT's matrices as f16).
"""
import dataclasses

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gguf_helpers
from llamacpp_vision import llamacpp_image_embeddings
from mvlm_jax.checkpoint import load_model
from mvlm_jax.convert.hf import import_hf
from mvlm_jax.edge.llamacpp import LlamaCppModel
from mvlm_jax.export.gguf_file import export_gguf
from mvlm_jax.models import build_model
from mvlm_jax.models.config import with_rope_scaling
from test_vlm import build_mobilevlm

PROMPT = [1] + np.random.default_rng(0).integers(3, 320, 47).tolist()
TOLERANCE = {"f32": None, "f16": 0.01, "q8_0": 0.10}  # of max |logit|; f32: 1e-3 absolute


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    config = gguf_helpers.llm_config()  # GQA: 4 query heads, 2 KV heads (the K permutation uses 2)
    ckpt, params = gguf_helpers.checkpoint(root / "llm", config)
    expected = np.asarray(build_model(config).apply({"params": params}, jnp.asarray([PROMPT])))[0]
    return ckpt, expected


@pytest.mark.parametrize("file_type", ["f32", "f16", "q8_0"])
def test_llamacpp_logits_equal_jax(llm, tmp_path, file_type):
    ckpt, expected = llm
    (path,) = export_gguf(ckpt, tmp_path, file_type)
    with LlamaCppModel(path, n_ctx=128) as model:
        got = model.logits(PROMPT)
        assert model.tokenize("the cat sat") == [1] + [int(t) for t in _sp(ckpt).encode("the cat sat")]
    error = np.abs(got - expected).max()
    top1 = np.mean(got.argmax(-1) == expected.argmax(-1))
    print(f"{file_type}: max |llama.cpp - JAX| {error:.2e} (max |logit| {np.abs(expected).max():.2f}), top-1 {top1:.3f}")
    if file_type == "f32":
        assert error <= 1e-3
        assert top1 == 1.0
    else:
        assert error <= TOLERANCE[file_type] * np.abs(expected).max()
        assert top1 >= (1.0 if file_type == "f16" else 0.9)


@pytest.mark.parametrize("file_type", ["f16", "q8_0"])
def test_llamacpp_logits_follow_the_weights_the_file_stores(tmp_path, file_type):
    """Most of the f16 and q8_0 files' distance from JAX above is the rounding of their weights: JAX on the
    values the file holds (llm_gguf.as_stored: encoded and decoded as the export writes them) gives
    llama.cpp's f16 logits within the f32 tolerance (1e-3) and halves the q8_0 distance (0.018 against
    0.034 of max |logit| 0.70 when measured); the rest is llama.cpp's q8_0 product, which rounds the
    activations to q8_0 blocks too, something no weight values can show."""
    from mvlm_jax.export.llm_gguf import as_stored

    config = gguf_helpers.llm_config()
    ckpt, params = gguf_helpers.checkpoint(tmp_path / "llm", config)
    stored = as_stored(params, file_type)
    logits = lambda p: np.asarray(build_model(config).apply({"params": p}, jnp.asarray([PROMPT])))[0]  # noqa: E731
    expected, plain = logits(stored), logits(params)
    (path,) = export_gguf(ckpt, tmp_path, file_type)
    with LlamaCppModel(path, n_ctx=128) as model:
        got = model.logits(PROMPT)
    error, plain_error = np.abs(got - expected).max(), np.abs(got - plain).max()
    print(f"{file_type}: max |llama.cpp - JAX on the stored weights| {error:.2e}, on the trained ones {plain_error:.2e}")
    if file_type == "f16":
        assert error <= 1e-3 < plain_error
        assert np.mean(got.argmax(-1) == expected.argmax(-1)) == 1.0
    else:
        assert error <= 0.6 * plain_error
        assert np.mean(got.argmax(-1) == expected.argmax(-1)) >= np.mean(got.argmax(-1) == plain.argmax(-1))


def test_scaled_rope_logits_equal_jax_past_the_original_length(tmp_path):
    """Linear RoPE scaling 4 from 32 trained positions: llama.cpp reads the scaling keys and its logits at
    all 128 positions equal JAX's (f32 file, the tolerance of the f32 test above)."""
    config = with_rope_scaling(gguf_helpers.llm_config(max_position_embeddings=32), 4.0)
    ckpt, params = gguf_helpers.checkpoint(tmp_path / "llm", config)
    prompt = [1] + np.random.default_rng(1).integers(3, 320, 127).tolist()
    expected = np.asarray(build_model(config).apply({"params": params}, jnp.asarray([prompt])))[0]
    (path,) = export_gguf(ckpt, tmp_path / "out", "f32")
    fields = {name: field.contents() for name, field in gguf.GGUFReader(path).fields.items()}
    assert fields["llama.rope.scaling.type"] == "linear" and fields["llama.rope.scaling.factor"] == 4.0
    assert (fields["llama.rope.scaling.original_context_length"], fields["llama.context_length"]) == (32, 128)
    with LlamaCppModel(path, n_ctx=128) as model:
        got = model.logits(prompt)
    error = np.abs(got - expected).max()
    print(f"scaled RoPE: max |llama.cpp - JAX| {error:.2e} over positions 0..127 (trained: 0..31)")
    assert error <= 1e-3 and np.mean(got.argmax(-1) == expected.argmax(-1)) == 1.0
    plain = np.asarray(build_model(with_rope_scaling(config, 1.0)).apply({"params": params}, jnp.asarray([prompt])))[0]
    assert np.abs(got - plain)[32:].max() > 100 * error  # llama.cpp did scale: plain RoPE is far off


def _sp(ckpt):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))


def test_k_quant_goes_through_llamacpps_quantizer(tmp_path):
    """q4_k_s: llama.cpp's mix (Q4_K matrices, Q6_K output) on rows of 256; logits stay correlated."""
    config = gguf_helpers.llm_config(hidden_size=256, intermediate_size=512)
    ckpt, params = gguf_helpers.checkpoint(tmp_path / "llm", config)
    (path,) = export_gguf(ckpt, tmp_path / "out", "q4_k_s")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.1.attn_q.weight"] == "Q4_K" and types["output.weight"] == "Q6_K"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["llm-q4_k_s.gguf"]  # the F16 step is gone
    expected = np.asarray(build_model(config).apply({"params": params}, jnp.asarray([PROMPT])))[0]
    with LlamaCppModel(path, n_ctx=128) as model:
        got = model.logits(PROMPT)
    correlation = np.corrcoef(got.ravel(), expected.ravel())[0, 1]
    print(f"q4_k_s: correlation {correlation:.3f}, top-1 {np.mean(got.argmax(-1) == expected.argmax(-1)):.3f}")
    assert correlation > 0.9


def _embeddings(tmp_path, config, params, cls="keep", seed=0):
    ckpt = tmp_path / "ckpt"
    paths = export_gguf(ckpt, tmp_path / "out", "f32", cls=cls)
    rgb, pixels = gguf_helpers.image(seed)
    with LlamaCppModel(paths[0], paths[1], n_ctx=1024) as model:
        got = model.image_embeddings(rgb)
    modelled = np.asarray(llamacpp_image_embeddings(params, config, jnp.asarray(pixels), cls))[0]
    correct = np.asarray(build_model(config).apply({"params": params}, jnp.asarray(pixels[:, None]),
                                                   method="encode_images"))[0, 0]
    return got, modelled, correct


def _close(got, reference) -> bool:
    return np.abs(got - reference).max() <= 5e-3 * np.abs(reference).max() and gguf_helpers.cosine(got, reference) > 0.9999


@pytest.mark.parametrize("projector, blocks", [("ldp", 3), ("ldpv2", 3), ("mlp2x_gelu", 3), ("ldp", 0)])
def test_image_embeddings_without_class_token_are_exact(tmp_path, projector, blocks):
    """A tower without a class token (what the demo trains) runs in llama.cpp exactly as in JAX, also with
    0 blocks (select_layer 0, the demo's random tower: embeddings and pre-norm)."""
    config = gguf_helpers.vlm_config(projector, class_token=False)
    if not blocks:
        config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, num_layers=0, select_layer=0))
    _, params = gguf_helpers.checkpoint(tmp_path / "ckpt", config)
    assert ("layers" in params["vision"]) == bool(blocks)
    got, modelled, correct = _embeddings(tmp_path, config, params)
    assert got.shape == (config.num_visual_tokens, config.llm.hidden_size)
    np.testing.assert_array_equal(modelled, correct)  # nothing to model: llama.cpp's order is ours
    assert _close(got, correct), (np.abs(got - correct).max(), gguf_helpers.cosine(got, correct))


@pytest.mark.parametrize("projector, cls", [("ldp", "keep"), ("ldpv2", "keep"), ("mlp2x_gelu", "keep"),
                                            ("ldp", "reorder"), ("ldp", "drop")])
def test_class_token_towers_run_as_the_model_of_llamacpp_predicts(tmp_path, projector, cls):
    """With a class token, llama.cpp's embeddings equal our JAX model of its defective graph, for every way
    of writing the file; the faithful file is far from the correct (HF-order) embeddings."""
    config = gguf_helpers.vlm_config(projector, class_token=True)
    _, params = gguf_helpers.checkpoint(tmp_path / "ckpt", config)
    got, modelled, correct = _embeddings(tmp_path, config, params, cls)
    assert _close(got, modelled), (np.abs(got - modelled).max(), gguf_helpers.cosine(got, modelled))
    similarity = gguf_helpers.cosine(got, correct)
    print(f"{projector} cls={cls}: cosine to the correct embeddings {similarity:.4f}")
    if cls != "drop":  # patch 0 lost, the grid shifted by one, the class token fed as a patch
        assert not _close(got, correct) and similarity < 0.95


def _greedy_without_cache(model, params, tokens, pixels, slot, steps):
    """Greedy decoding by the full forward at every step (one compile: a causal model ignores the padding)."""
    forward = jax.jit(lambda t: model.apply({"params": params}, t, jnp.asarray(pixels[:, None]), jnp.asarray([[slot]])))
    buffer = np.zeros((1, len(tokens) + steps), np.int32)
    buffer[0, :len(tokens)] = tokens
    for i in range(len(tokens), len(tokens) + steps):
        buffer[0, i] = int(np.argmax(forward(jnp.asarray(buffer))[0, i - 1]))
    return buffer[0, len(tokens):].tolist()


@pytest.mark.parametrize("projector_type", ["ldpnet", "ldpnetv2"])
def test_official_layout_round_trip_runs_in_llamacpp(tmp_path, projector_type):
    """A MobileVLM-layout HF checkpoint (V1 ldpnet / V2 ldpnetv2 names), imported and exported to GGUF:
    llama.cpp's text logits and image embeddings match, and a prompt with an image continues greedily
    with the same tokens in llama.cpp as in JAX."""
    build_mobilevlm(tmp_path, projector_type, llama_shape=dict(vocab_size=320, hidden_size=64, intermediate_size=128),
                    clip_shape=dict(image_size=336, patch_size=14))
    (tmp_path / "vlm" / "tokenizer.model").write_bytes(gguf_helpers.tokenizer(tmp_path).read_bytes())
    config = import_hf(tmp_path / "vlm", tmp_path / "ckpt")
    params, _ = load_model(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "tokenizer.model").is_file()  # the import keeps the tokenizer
    got, modelled, _ = _embeddings(tmp_path, config, params, "drop")
    assert _close(got, modelled)

    rgb, pixels = gguf_helpers.image(1)
    before, after = PROMPT[:5], PROMPT[5:12]
    tokens = before + [0] * config.num_visual_tokens + after
    # llama.cpp runs the file written with cls="drop": JAX on that tower (no class token, patch positions).
    drop_params = {**params, "vision": {k: v for k, v in params["vision"].items() if k != "class_embedding"}}
    drop_params["vision"]["position_embedding"] = params["vision"]["position_embedding"][1:]
    drop_config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, class_token=False))
    expected = _greedy_without_cache(build_model(drop_config), drop_params, tokens, pixels, len(before), 6)
    with LlamaCppModel(tmp_path / "out" / "ckpt-f32.gguf", tmp_path / "out" / "mmproj-ckpt-cls-drop-f16.gguf") as runtime:
        generated = runtime.greedy([before, rgb, after], max_new_tokens=6)
    assert generated == expected


def test_generate_and_chat_run_the_same_through_llamacpp(tmp_path, capsys):
    """`mvlm generate|chat --gguf ... --mmproj ...` answer as `--ckpt` does (greedy, f32 export)."""
    from PIL import Image

    from mvlm_jax.generate.cli import chat_main, generate_main

    config = gguf_helpers.vlm_config("ldp", class_token=False)
    ckpt, _ = gguf_helpers.checkpoint(tmp_path / "ckpt", config)
    llm, mmproj = export_gguf(ckpt, tmp_path / "out", "f32")
    picture = tmp_path / "picture.png"
    Image.fromarray(gguf_helpers.image(2)[0]).save(picture)
    common = ["--max-new-tokens", "8"]
    outputs = {}
    for name, source in (("jax", ["--ckpt", str(ckpt)]), ("llama.cpp", ["--gguf", str(llm), "--mmproj", str(mmproj)])):
        assert generate_main(source + ["--prompt", "the cat sat on", *common]) == 0
        assert chat_main(source + ["--image", str(picture), "--prompt", "What is in the image?", *common]) == 0
        outputs[name] = capsys.readouterr().out
    assert outputs["llama.cpp"] == outputs["jax"] and len(outputs["jax"].strip()) > 0
    assert generate_main(["--gguf", str(llm), "--image", str(picture), "--prompt", "x"]) == 1
    assert "--image needs --mmproj" in capsys.readouterr().err
