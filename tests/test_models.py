"""Model properties: parameter counts, packed-sequence isolation, bf16 vs f32, remat, LoRA, configs."""
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jit_init import init_params
from mvlm_jax.models import abstract_params, build_model
from mvlm_jax.models import llama as llama_lib
from mvlm_jax.models import vit as vit_lib
from mvlm_jax.models.config import (LLAMA_PRESETS, PROJECTOR_PRESETS, VISION_PRESETS, LoraConfig, VLMConfig,
                                    from_dict, to_dict)
from mvlm_jax.models.lora import merge_lora

TINY = LLAMA_PRESETS["tiny"]


def count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name, exact", [("1.4b", 1_364_297_728), ("2.7b", 2_701_560_320), ("tiny", None)])
def test_llama_parameter_counts(name, exact):
    config = LLAMA_PRESETS[name]
    from_shapes = count(abstract_params(config))
    assert from_shapes == llama_lib.count_params(config)
    if exact is not None:
        assert from_shapes == exact


def test_vision_tower_counts_only_the_blocks_it_runs():
    config = VISION_PRESETS["l14_336"]
    assert count(abstract_params(config)) == vit_lib.count_params(config) == 290_909_184
    full = dataclasses.replace(config, select_layer=-1)  # all 24 blocks, still no post_layernorm
    assert count(abstract_params(full)) == 290_909_184 + 12_596_224


def test_every_parameter_has_logical_axis_names():
    config = VLMConfig(VISION_PRESETS["tiny"], PROJECTOR_PRESETS["ldp"], dataclasses.replace(TINY, lora=LoraConfig(4)))
    boxed = abstract_params(config)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    assert all(len(leaf.names) == leaf.value.ndim for leaf in leaves)


def test_packed_documents_never_attend_across_segments():
    model = build_model(TINY)
    params = init_params(TINY, jax.random.key(0))
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 512, (1, 7)), rng.integers(0, 512, (1, 9))
    packed = jnp.asarray(np.concatenate([first, second], 1), jnp.int32)
    segments = jnp.asarray([[1] * 7 + [2] * 9])
    positions = jnp.asarray([list(range(7)) + list(range(9))])
    logits = np.asarray(model.apply({"params": params}, packed, segments, positions))
    alone_first = np.asarray(model.apply({"params": params}, jnp.asarray(first, jnp.int32)))
    alone_second = np.asarray(model.apply({"params": params}, jnp.asarray(second, jnp.int32)))
    np.testing.assert_allclose(logits[:, :7], alone_first, atol=1e-5)
    np.testing.assert_allclose(logits[:, 7:], alone_second, atol=1e-5)
    # Without the segment ids the second document does see the first.
    unsegmented = np.asarray(model.apply({"params": params}, packed, None, positions))
    assert np.abs(unsegmented[:, 7:] - alone_second).max() > 1e-3


def test_bfloat16_compute_stays_close_to_float32():
    config = dataclasses.replace(TINY, num_layers=4)
    params = init_params(config, jax.random.key(1))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 512, (2, 32)), jnp.int32)
    f32 = np.asarray(build_model(config).apply({"params": params}, tokens))
    bf16_logits = build_model(dataclasses.replace(config, dtype="bfloat16")).apply({"params": params}, tokens)
    assert bf16_logits.dtype == jnp.float32  # logits stay float32
    # Stated tolerance: bf16 has 8 mantissa bits; across 4 layers the logits move by < 2 % of their range.
    scale = np.abs(f32).max()
    assert np.abs(np.asarray(bf16_logits) - f32).max() < 0.02 * scale
    assert (np.asarray(bf16_logits).argmax(-1) == f32.argmax(-1)).mean() > 0.9
    assert jax.tree.leaves(params)[0].dtype == jnp.float32


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_give_the_same_gradients(policy):
    params = init_params(TINY, jax.random.key(2))
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 512, (2, 16)), jnp.int32)

    def loss(p, config):
        return build_model(config).apply({"params": p}, tokens).mean()

    plain = jax.grad(loss)(params, TINY)
    remat = jax.grad(loss)(params, dataclasses.replace(TINY, remat_policy=policy))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_unrolled_layer_scan_gives_the_same_outputs_and_gradients():
    params = init_params(TINY, jax.random.key(3))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 512, (2, 16)), jnp.int32)
    unrolled = dataclasses.replace(TINY, scan_unroll=TINY.num_layers)
    assert jax.tree.structure(init_params(unrolled, jax.random.key(3))) == jax.tree.structure(params)

    def loss(p, config):
        return build_model(config).apply({"params": p}, tokens).mean()

    for a, b in zip(jax.tree.leaves(jax.value_and_grad(loss)(params, TINY)),
                    jax.tree.leaves(jax.value_and_grad(loss)(params, unrolled))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_causal_block_attention_matches_dense_attention_with_gradients():
    from mvlm_jax.models.attention import attention, segment_causal_mask
    length = 200  # blocks of 128 and 72: the last one is short; 4 query heads over 2 KV heads
    q, w = (jax.random.normal(jax.random.key(i), (2, length, 4, 8)) for i in range(2))
    k, v = (jax.random.normal(jax.random.key(i), (2, length, 2, 8)) for i in range(2, 4))
    segments = jnp.asarray(np.repeat([[1, 2, 3, 0]], [60, 90, 30, 20], axis=1).repeat(2, 0), jnp.int32)
    mask = segment_causal_mask(segments)

    def loss(impl):
        return lambda q, k, v: jnp.sum(attention(q, k, v, mask, impl) * w)

    dense = jax.value_and_grad(loss(None), (0, 1, 2))(q, k, v)
    blocked = jax.value_and_grad(loss("causal_blocks"), (0, 1, 2))(q, k, v)
    for a, b in zip(jax.tree.leaves(dense), jax.tree.leaves(blocked)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # a whole model with it gives the same logits as with XLA's dense attention
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 512, (1, 136)), jnp.int32)
    params = init_params(TINY, jax.random.key(4))
    blocks = dataclasses.replace(TINY, attention_impl="causal_blocks")
    np.testing.assert_allclose(np.asarray(build_model(blocks).apply({"params": params}, tokens)),
                               np.asarray(build_model(TINY).apply({"params": params}, tokens)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="q_len == kv_len"):
        attention(q, k[:, :150], v[:, :150], mask[..., :150], "causal_blocks")
    with pytest.raises(ValueError, match="mask=None"):
        attention(q, k, v, None, "causal_blocks")


def test_lora_starts_as_the_base_model_and_merges_exactly():
    lora = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"), dropout=0.0)
    config = dataclasses.replace(TINY, lora=lora)
    params = init_params(config, jax.random.key(3))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 512, (2, 12)), jnp.int32)
    base_params = jax.tree.map(lambda x: x, params)
    for path in (("attn", "q_proj"), ("attn", "v_proj"), ("mlp", "down_proj")):
        layer = base_params["layers"][path[0]][path[1]]
        assert set(layer) == {"kernel", "lora_a", "lora_b"}
        del layer["lora_a"], layer["lora_b"]
    assert "lora_a" not in params["layers"]["attn"]["k_proj"]
    fresh = build_model(config).apply({"params": params}, tokens)
    base = build_model(TINY).apply({"params": base_params}, tokens)
    np.testing.assert_allclose(np.asarray(fresh), np.asarray(base), atol=1e-6)  # lora_b starts at zero

    trained = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.05 if "lora_b" in jax.tree_util.keystr(path) else x, params)
    with_adapters = np.asarray(build_model(config).apply({"params": trained}, tokens))
    assert np.abs(with_adapters - np.asarray(base)).max() > 1e-3
    merged, merged_config = merge_lora(trained, config)
    assert merged_config.lora is None and count(merged) == count(base_params)
    np.testing.assert_allclose(np.asarray(build_model(merged_config).apply({"params": merged}, tokens)),
                               with_adapters, atol=1e-5)


def test_lora_share_matches_the_paper():
    # Paper 4.4: r 128 on every LLM Linear gives 8.87 % of MobileLLaMA 1.4B (121,110,528 parameters).
    config = dataclasses.replace(LLAMA_PRESETS["1.4b"], lora=LoraConfig())
    adapters = count(abstract_params(config)) - llama_lib.count_params(LLAMA_PRESETS["1.4b"])
    assert adapters == 121_110_528


def test_configs_round_trip_through_json_and_reject_unknown_keys():
    config = VLMConfig(VISION_PRESETS["l14_336"], PROJECTOR_PRESETS["ldp_downsample_first"],
                       dataclasses.replace(LLAMA_PRESETS["2.7b"], lora=LoraConfig()))
    assert from_dict(json.loads(json.dumps(to_dict(config)))) == config
    data = to_dict(LLAMA_PRESETS["tiny"])
    data["config"]["hidden_sise"] = 3
    with pytest.raises(ValueError, match="hidden_sise"):
        from_dict(data)
    # VLM configs saved before image_token_id was retired still load; a value it never had is refused.
    old = to_dict(config)
    old["config"]["image_token_id"] = -200
    assert from_dict(old) == config
    old["config"]["image_token_id"] = 7
    with pytest.raises(ValueError, match="image_token_id"):
        from_dict(old)


def test_sincos2d_position_embeddings_start_as_big_visions_table():
    """posemb_init="sincos2d": the table of big_vision's posemb_sincos_2d, written out here from its
    definition (rows row-major over the patch grid, columns sin x | cos x | sin y | cos y), a zero row for
    the class token; "normal" keeps CLIP's std 0.02."""
    side, width = 4, 8
    config = dataclasses.replace(VISION_PRESETS["tiny"], image_size=side * 8, patch_size=8, width=width,
                                 num_heads=2, posemb_init="sincos2d")
    table = np.asarray(init_params(config, jax.random.key(0))["position_embedding"])
    omega = 1.0 / 10_000.0 ** (np.arange(width // 4) / (width // 4 - 1))
    for row, col in ((0, 0), (1, 3), (3, 2)):
        x, y = col * omega, row * omega
        expected = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)])
        np.testing.assert_allclose(table[1 + row * side + col], expected, atol=1e-6)  # row 0: class token
    np.testing.assert_array_equal(table[0], 0.0)
    normal = np.asarray(init_params(dataclasses.replace(config, posemb_init="normal"), jax.random.key(0))["position_embedding"])
    assert 0.01 < normal.std() < 0.03
