"""Projectors against an independent PyTorch reference (tests/torch_refs.py, written from the spec),
loaded through the MobileVLM state-dict names: equal outputs (1e-4), 576 tokens in, 144 out."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_refs
from mvlm_jax.convert.families import projector_mapping
from mvlm_jax.convert.mapping import import_params
from mvlm_jax.convert.safetensors_io import DictSource
from mvlm_jax.models.config import PROJECTOR_PRESETS, projector_output_tokens
from mvlm_jax.models.projectors import Projector

VISION_WIDTH, HIDDEN = 32, 64
PREFIX = "model.mm_projector."


def torch_reference(name: str) -> torch.nn.Module:
    config = PROJECTOR_PRESETS[name]
    if config.type == "mlp2x_gelu":
        return torch_refs.MLP2xGELU(VISION_WIDTH, HIDDEN)
    if config.type == "ldpv2":
        return torch_refs.LDPv2(VISION_WIDTH, HIDDEN)
    return torch_refs.LDP(VISION_WIDTH, HIDDEN, strides=config.block_strides, front_mlp=config.front_mlp)


def abstract(config, vision_width, hidden, tokens=576):
    model = Projector(config, hidden)
    return nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, tokens, vision_width))))["params"])


@pytest.mark.parametrize("name", sorted(PROJECTOR_PRESETS))
def test_matches_torch_reference_through_mobilevlm_names(name):
    config = PROJECTOR_PRESETS[name]
    reference = torch_refs.randomize_(torch_reference(name).eval(), seed=7)
    state = {PREFIX + k: v.numpy() for k, v in reference.state_dict().items()}
    params = import_params(DictSource(state), projector_mapping(config), abstract(config, VISION_WIDTH, HIDDEN))

    features = np.random.default_rng(1).normal(size=(2, 576, VISION_WIDTH)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(features)).numpy()
    got = np.asarray(Projector(config, HIDDEN).apply({"params": params}, jnp.asarray(features)))
    assert got.shape == expected.shape == (2, projector_output_tokens(config, 576), HIDDEN)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_both_ldps_turn_576_tokens_into_144():
    assert projector_output_tokens(PROJECTOR_PRESETS["ldp"], 576) == 144
    assert projector_output_tokens(PROJECTOR_PRESETS["ldpv2"], 576) == 144
    assert projector_output_tokens(PROJECTOR_PRESETS["mlp2x_gelu"], 576) == 576


@pytest.mark.parametrize("name, hidden, count", [
    ("ldp", 2048, 18_936_832), ("ldp", 2560, 28_913_920), ("ldpv2", 2048, 6_316_032),
    ("ldpv2", 2560, 9_205_760), ("ldpv2", 4096, 21_020_672), ("mlp2x_gelu", 2048, 6_295_552)])
def test_parameter_counts_from_the_spec(name, hidden, count):
    shapes = abstract(PROJECTOR_PRESETS[name], 1024, hidden)
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes)) == count


def test_table9_variants_are_configurations_of_one_builder():
    no_front = dataclasses.replace(PROJECTOR_PRESETS["ldp"], front_mlp=False)
    assert no_front == PROJECTOR_PRESETS["ldp_no_front_pw"]
    shapes = abstract(PROJECTOR_PRESETS["ldp_downsample_first"], VISION_WIDTH, HIDDEN)
    # stride 2 first: block_0's depthwise conv sees the full grid, block_1 keeps the residual.
    assert set(shapes) == {"mlp", "block_0", "block_1"}


def test_ldpv2_pools_any_grid_to_12x12_like_adaptive_avg_pool():
    # A 14x14 grid (CLIP B/16-224): overlapping adaptive windows, not a 2x2 mean.
    config = PROJECTOR_PRESETS["ldpv2"]
    reference = torch_refs.randomize_(torch_refs.LDPv2(VISION_WIDTH, HIDDEN, out_shape=(12, 12)).eval(), seed=9)
    state = {PREFIX + k: v.numpy() for k, v in reference.state_dict().items()}
    params = import_params(DictSource(state), projector_mapping(config), abstract(config, VISION_WIDTH, HIDDEN, 196))
    features = np.random.default_rng(2).normal(size=(1, 196, VISION_WIDTH)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(features)).numpy()
    got = np.asarray(Projector(config, HIDDEN).apply({"params": params}, jnp.asarray(features)))
    assert got.shape == (1, 144, HIDDEN)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
