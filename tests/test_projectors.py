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
from mvlm_jax.models.projectors import Projector, depthwise_conv3x3

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


@pytest.mark.parametrize("stride, size, dtype, tol", [(1, 24, jnp.float32, 1e-5), (2, 24, jnp.float32, 1e-5),
                                                      (2, 7, jnp.float32, 1e-5), (1, 6, jnp.bfloat16, 2e-2)])
def test_depthwise_backward_equals_autodiff_of_a_grouped_convolution(stride, size, dtype, tol):
    """The hand-written backward of depthwise_conv3x3 against XLA's grouped convolution and its autodiff."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, size, size, 16)), dtype)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 16)), dtype)
    rows = (size - 1) // stride + 1
    weights = jnp.asarray(rng.normal(size=(2, rows, rows, 16)), jnp.float32)

    def reference(x, kernel):
        out = jax.lax.conv_general_dilated(x.astype(jnp.float32), kernel[:, :, None, :].astype(jnp.float32),
                                           (stride, stride), ((1, 1), (1, 1)), feature_group_count=16,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(out * weights)

    ours = lambda x, kernel: jnp.sum(depthwise_conv3x3(x, kernel, stride).astype(jnp.float32) * weights)  # noqa: E731
    np.testing.assert_allclose(ours(x, kernel), reference(x, kernel), rtol=tol, atol=tol * 10)
    for got, expected in zip(jax.grad(ours, (0, 1))(x, kernel), jax.grad(reference, (0, 1))(x, kernel)):
        assert got.dtype == dtype and got.shape == expected.shape
        scale = float(jnp.max(jnp.abs(expected)))
        np.testing.assert_allclose(np.asarray(got, np.float32) / scale, np.asarray(expected) / scale, atol=tol)


@pytest.mark.parametrize("name", ["ldp", "ldpv2"])
def test_gradients_match_torch_autograd_through_mobilevlm_names(name):
    """Parameter and input gradients of a loss on the output against PyTorch autograd, mapped by name."""
    config = PROJECTOR_PRESETS[name]
    reference = torch_refs.randomize_(torch_reference(name).eval(), seed=11)
    mapping = projector_mapping(config)
    params = import_params(DictSource({PREFIX + k: v.detach().numpy() for k, v in reference.state_dict().items()}),
                           mapping, abstract(config, VISION_WIDTH, HIDDEN))
    rng = np.random.default_rng(5)
    features = rng.normal(size=(2, 576, VISION_WIDTH)).astype(np.float32)
    weights = rng.normal(size=(2, projector_output_tokens(config, 576), HIDDEN)).astype(np.float32)

    torch_features = torch.from_numpy(features).requires_grad_(True)
    (reference(torch_features) * torch.from_numpy(weights)).sum().backward()
    torch_grads = {PREFIX + k: v.grad.numpy() for k, v in reference.named_parameters()}
    expected = import_params(DictSource(torch_grads), mapping, abstract(config, VISION_WIDTH, HIDDEN))

    loss = lambda p, f: jnp.sum(Projector(config, HIDDEN).apply({"params": p}, f) * weights)  # noqa: E731
    got_params, got_features = jax.grad(loss, (0, 1))(params, jnp.asarray(features))
    np.testing.assert_allclose(got_features, torch_features.grad.numpy(), rtol=1e-3, atol=1e-4)
    flat_got, flat_expected = jax.tree.leaves_with_path(got_params), jax.tree.leaves(expected)
    assert len(flat_got) == len(flat_expected)
    for (path, got), want in zip(flat_got, flat_expected):
        scale = max(float(np.abs(want).max()), 1e-6)
        np.testing.assert_allclose(np.asarray(got) / scale, np.asarray(want) / scale, atol=1e-4, err_msg=str(path))
