"""Attention kernels (mvlm_jax/models/attention.py): splash in Pallas interpret mode against XLA's dense
masked attention on packed rows, cuDNN's packed layout against the segment mask it stands for, the kernel
choice per platform, and the whole LLM (training forward and generation prefill) with splash."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jit_init import init_params
from mvlm_jax.models import build_model
from mvlm_jax.models.attention import (packed_layout, resolve, segment_attention, segment_causal_mask,
                                       splash_attention)
from mvlm_jax.models.config import LLAMA_PRESETS

# float32 scores summed in another order (blocks of 128 with an online softmax): measured max 1.2e-6
TOLERANCE = dict(rtol=2e-5, atol=2e-5)


def packed_rows(length: int) -> jax.Array:
    """Two rows: three segments and padding; two segments and a long tail of padding."""
    first = np.repeat([1, 2, 3, 0], [length // 4, length // 3, length // 4, length - length // 4 * 2 - length // 3])
    second = np.repeat([1, 2, 0], [length // 2, length // 5, length - length // 2 - length // 5])
    return jnp.asarray(np.stack([first, second]), jnp.int32)


def qkvw(length: int, heads: int = 4, kv_heads: int = 2, head_dim: int = 16):
    q, w = (jax.random.normal(jax.random.key(i), (2, length, heads, head_dim)) for i in (0, 1))
    k, v = (jax.random.normal(jax.random.key(i), (2, length, kv_heads, head_dim)) for i in (2, 3))
    return q, k, v, w


@pytest.mark.parametrize("length", [256, 200])  # 200: the kernel pads the rows to 256 itself
def test_splash_matches_xla_outputs_and_gradients_on_packed_rows(length):
    q, k, v, w = qkvw(length)
    segments = packed_rows(length)

    def loss(kernel):
        return lambda q, k, v: jnp.sum(segment_attention(q, k, v, segments, kernel) * w)

    xla = jax.value_and_grad(loss("xla"), (0, 1, 2))(q, k, v)
    splash = jax.jit(jax.value_and_grad(loss("splash"), (0, 1, 2)))(q, k, v)
    for a, b in zip(jax.tree.leaves(xla), jax.tree.leaves(splash)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), **TOLERANCE)


def test_splash_runs_per_device_under_a_mesh():
    """Rows over the batch axes and heads over the tensor axis: shard_map gives each device its part,
    and the result equals the unsharded XLA attention."""
    from mvlm_jax import sharding
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=1, tensor=2), jax.devices()[:4])
    q, k, v, _ = qkvw(128)
    segments = packed_rows(128)
    with sharding.activate(mesh):
        out = jax.jit(splash_attention)(q, k, v, segments)
        hlo = jax.jit(splash_attention).lower(q, k, v, segments).as_text()
    assert "shard_map" in hlo or "manual" in hlo.lower()
    np.testing.assert_allclose(np.asarray(out), np.asarray(segment_attention(q, k, v, segments, "xla")), **TOLERANCE)
    with sharding.activate(sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1, tensor=4), jax.devices()[:4])):
        with pytest.raises(ValueError, match="2 KV heads do not split over the 4 devices"):
            splash_attention(q, k, v, segments)


def test_cudnn_packed_layout_stands_for_the_segment_mask():
    """cuDNN is not on this machine; what it is given is: per-segment (start, length) must rebuild the
    causal segment mask on every real token, for packed rows and for a left-padded prompt."""
    prompt = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 1]] * 1 + [[1] * 8], jnp.int32)
    for segments in (packed_rows(64), prompt):
        lengths, offsets = packed_layout(segments)
        seq = segments.shape[1]
        assert lengths.shape == (segments.shape[0], seq) and offsets.shape == (segments.shape[0], seq + 1)
        expected = np.asarray(segment_causal_mask(segments))[:, 0]
        for row in range(segments.shape[0]):
            rebuilt = np.zeros((seq, seq), bool)
            for start, size in zip(np.asarray(offsets[row]), np.asarray(lengths[row])):
                if size < 0:
                    assert start == -1  # entries past the last segment are -1 in both arrays
                    continue
                rebuilt[start:start + size, start:start + size] = np.tril(np.ones((size, size), bool))
            real = np.asarray(segments[row]) > 0
            np.testing.assert_array_equal(rebuilt[real], expected[row][real])
        n_segments = [len(set(np.asarray(r).tolist()) - {0}) for r in segments]
        assert [int((np.asarray(l) > 0).sum()) for l in lengths] == n_segments


def test_kernel_choice_per_platform_and_clear_errors():
    assert [resolve("auto", p) for p in ("tpu", "gpu", "cuda", "cpu", "rocm")] == ["splash", "cudnn", "cudnn",
                                                                                   "xla", "xla"]
    assert resolve(None, "tpu") == "splash" and resolve("splash", "cpu") == "splash"  # interpreted on CPU
    assert resolve("causal_blocks", "tpu") == "causal_blocks"
    with pytest.raises(ValueError, match="attention='splash' cannot run on gpu"):
        resolve("splash", "gpu")
    with pytest.raises(ValueError, match="attention='cudnn' cannot run on tpu"):
        resolve("cudnn", "tpu")
    with pytest.raises(ValueError, match="cannot run on cpu"):
        resolve("cudnn", "cpu")
    assert resolve("auto", "gpu", "float32") == "xla"  # cuDNN's flash kernel has no float32
    with pytest.raises(ValueError, match="'cudnn' needs bfloat16 or float16 compute, not float32"):
        resolve("cudnn", "gpu", "float32")
    with pytest.raises(ValueError, match="config.model.attention: unknown kernel 'flash'"):
        resolve("flash", "cpu")


def test_the_llm_with_splash_gives_the_xla_logits_in_training_and_in_prefill():
    from mvlm_jax.generate.engine import init_cache
    from mvlm_jax.models.llama import MobileLLaMA
    tiny = LLAMA_PRESETS["tiny"]
    params = init_params(tiny, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 96)), jnp.int32)
    segments = packed_rows(96)
    by_kernel = {kernel: build_model(dataclasses.replace(tiny, attention_impl=kernel))
                 for kernel in ("xla", "splash", "causal_blocks")}
    logits = {k: np.asarray(jax.jit(m.apply)({"params": params}, tokens, segments)) for k, m in by_kernel.items()}
    np.testing.assert_allclose(logits["splash"], logits["xla"], **TOLERANCE)
    np.testing.assert_allclose(logits["causal_blocks"], logits["xla"], **TOLERANCE)
    # prefill into an empty cache: (None, segment ids) runs the configured kernel
    valid = (jnp.arange(96)[None, :] >= jnp.asarray([[0], [40]])).astype(jnp.int32)  # row 2 left-padded
    positions = jnp.maximum(jnp.arange(96)[None, :] - jnp.asarray([[0], [40]]), 0)
    prefill = {}
    for kernel in ("xla", "splash"):
        config = dataclasses.replace(tiny, attention_impl=kernel)
        out, _ = MobileLLaMA(config).apply({"params": params}, tokens, positions, (None, valid), init_cache(config, 2, 128),
                                           jnp.int32(0), method=MobileLLaMA.forward_with_cache)
        prefill[kernel] = np.asarray(out)
    real = np.asarray(valid, bool)
    np.testing.assert_allclose(prefill["splash"][real], prefill["xla"][real], **TOLERANCE)
