"""Attention behind one function, with the kernel chosen by name (`LlamaConfig.attention_impl`).

  xla            jax.nn.dot_product_attention with a dense [batch, 1, seq, seq] causal segment mask
  causal_blocks  the same XLA attention per block of 128 queries over the keys before it (CPU: skips
                 the scores above the diagonal)
  splash         TPU splash attention (Pallas) with the causal mask and SegmentIds; Pallas interpret
                 mode when lowered for any other platform (tests on CPU)
  cudnn          cuDNN flash attention (GPU) on the packed (ragged) layout: per-segment offsets and
                 lengths from the segment ids, causal within each segment
  auto           splash on TPU, cudnn on CUDA GPUs (bfloat16/float16 compute), xla elsewhere (`resolve`)

splash and cudnn never build a seq x seq array. Segment ids: [batch, seq] int32, 0 = padding; each
segment is contiguous (the packers write 1, 2, ... from position 0 with padding last; a left-padded
generation prompt has padding first).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KERNELS = ("auto", "xla", "causal_blocks", "splash", "cudnn")
# platform of the compile target -> kernel `auto` picks; the platforms each explicit kernel lowers for
AUTO = {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}
PLATFORMS = {"splash": ("tpu", "cpu"), "cudnn": ("gpu", "cuda")}
CAUSAL_BLOCK = 128  # measured once on the 2-core CPU for rows of 512: 128 beat 256 and matched 64
SPLASH_BLOCKS = (512, 256, 128)  # largest that divides the (padded) row; 512 is MaxText's default


def resolve(choice: str | None, platform: str, dtype: str = "bfloat16") -> str:
    """The kernel for `choice` on a compile target of `platform` ("cpu", "gpu"/"cuda", "tpu", "rocm") with
    compute `dtype`, or a ValueError naming the key when that kernel cannot run there."""
    choice = choice or "auto"
    if choice not in KERNELS:
        raise ValueError(f"config.model.attention: unknown kernel {choice!r}; expected one of {list(KERNELS)}")
    half = dtype in ("bfloat16", "float16")
    if choice == "auto":
        kernel = AUTO.get(platform, "xla")
        return "xla" if kernel == "cudnn" and not half else kernel  # cuDNN's flash kernel has no float32
    allowed = PLATFORMS.get(choice)
    if allowed is not None and platform not in allowed:
        raise ValueError(f"config.model.attention={choice!r} cannot run on {platform}: splash is a TPU kernel "
                         "(and runs interpreted on CPU for tests), cudnn needs a CUDA GPU; use 'auto' or 'xla'")
    if choice == "cudnn" and not half:
        raise ValueError(f"config.model.attention='cudnn' needs bfloat16 or float16 compute, not {dtype} "
                         "(config.model.dtype); use 'auto' or 'xla'")
    return choice


def attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None,
              implementation: str | None = None) -> jax.Array:
    """Scaled dot-product attention with grouped KV heads and an explicit mask (the vision tower: None).

    query: [batch, q_len, heads, head_dim]; key, value: [batch, kv_len, kv_heads, head_dim];
    mask: [batch, 1, q_len, kv_len] bool (True = attend) or None. Returns [batch, q_len, heads, head_dim].
    Softmax runs in float32 whatever the input dtype.
    """
    if implementation == "causal_blocks":
        return causal_block_attention(query, key, value, mask)
    return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation=implementation)


def segment_attention(query: jax.Array, key: jax.Array, value: jax.Array, segment_ids: jax.Array,
                      kernel: str | None = "xla") -> jax.Array:
    """Causal attention within segments: each token attends to the earlier tokens of its own segment
    (padding, segment 0, to earlier padding only, so no row is empty).

    query: [batch, seq, heads, head_dim]; key, value: [batch, seq, kv_heads, head_dim]; segment_ids:
    [batch, seq] int32. Returns [batch, seq, heads, head_dim] in the value dtype.
    """
    kernel = kernel or "auto"
    if kernel == "auto":  # not resolved for a compile target (build_run does): this process's backend
        kernel = resolve("auto", jax.default_backend(), jnp.dtype(query.dtype).name)
    if kernel == "splash":
        return splash_attention(query, key, value, segment_ids)
    if kernel == "cudnn":
        return cudnn_attention(query, key, value, segment_ids)
    return attention(query, key, value, segment_causal_mask(segment_ids), "causal_blocks" if kernel == "causal_blocks"
                     else None)


def segment_causal_mask(segment_ids: jax.Array) -> jax.Array:
    """[batch, seq] segment ids -> [batch, 1, seq, seq] mask: causal and within one segment.

    Padding (segment 0) attends only to padding, so no row is empty and no NaN can appear.
    """
    seq = segment_ids.shape[-1]
    causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & causal)[:, None]


def causal_block_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array,
                           block: int = CAUSAL_BLOCK) -> jax.Array:
    """`attention` for a causal `mask` (nothing above the diagonal, as every LLM mask here), skipping the
    key blocks after each query block: (n + 1) / 2n of the dense scores for n blocks, exact otherwise.

    XLA's dense attention computes and masks every score, and on CPU the softmax over them dominates the
    step; GPU and TPU kernels skip those blocks themselves. Shapes as `attention`; q_len == kv_len.
    """
    if mask is None:
        raise ValueError("causal block attention needs the causal mask it skips blocks of; got mask=None")
    length = query.shape[1]
    if key.shape[1] != length:
        raise ValueError(f"causal block attention needs q_len == kv_len, got {length} and {key.shape[1]}")
    outs = []
    for start in range(0, length, block):
        stop = min(start + block, length)
        outs.append(jax.nn.dot_product_attention(query[:, start:stop], key[:, :stop], value[:, :stop],
                                                 mask=mask[:, :, start:stop, :stop]))
    return jnp.concatenate(outs, axis=1)


# --- splash (TPU) ---------------------------------------------------------------------------------

def _splash_block(length: int) -> int:
    return next(block for block in SPLASH_BLOCKS if length % block == 0)


def _splash_kernel(heads: int, length: int, interpret: bool):
    """The splash kernel for `heads` query heads on rows of `length` (a multiple of 128), causal."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    block = _splash_block(length)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    mask = masks.MultiHeadMask([masks.CausalMask((length, length)) for _ in range(heads)])
    # Built per trace (its mask tables become constants of that trace; a cached kernel would leak them)
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_local(query: jax.Array, key: jax.Array, value: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Splash on the arrays one device holds: [batch, seq, heads, head_dim] in, same out."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    length = query.shape[1]
    padded = -(-length // SPLASH_BLOCKS[-1]) * SPLASH_BLOCKS[-1]
    if padded != length:  # the kernel tiles rows in blocks of 128: extra positions are padding (segment 0)
        widen = lambda x: jnp.pad(x, ((0, 0), (0, padded - length)) + ((0, 0),) * (x.ndim - 2))  # noqa: E731
        query, key, value, segment_ids = map(widen, (query, key, value, segment_ids))
    scale = jnp.asarray(query.shape[-1] ** -0.5, query.dtype)  # the kernel does not scale the logits
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [batch, heads, seq, head_dim]
    q, k, v = heads_first(query * scale), heads_first(key), heads_first(value)

    def run(interpret: bool):
        kernel = _splash_kernel(query.shape[2], padded, interpret)
        return lambda q, k, v, s: jax.vmap(lambda q, k, v, s: kernel(q, k, v, SegmentIds(s, s)))(q, k, v, s)

    # The compiled kernel when lowered for TPU, the interpreter for any other target (CPU tests).
    out = jax.lax.platform_dependent(q, k, v, segment_ids, tpu=run(False), default=run(True))
    return heads_first(out)[:, :length].astype(value.dtype)


def splash_attention(query: jax.Array, key: jax.Array, value: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """`segment_attention` with the splash kernel. Under a mesh the kernel runs per device (shard_map):
    rows split as the logical "batch" axis and heads as "act_heads" map in the active rules."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return _splash_local(query, key, value, segment_ids)
    batch_axes, _, head_axes = nn.logical_to_mesh_axes(("batch", "length", "act_heads"))
    spec = jax.sharding.PartitionSpec(batch_axes, None, head_axes, None)
    head_shards = math.prod(mesh.shape[a] for a in np.atleast_1d(head_axes)) if head_axes else 1
    if key.shape[2] % head_shards:
        raise ValueError(f"splash attention: {key.shape[2]} KV heads do not split over the {head_shards} "
                         f"devices of mesh axes {head_axes}")
    return jax.shard_map(_splash_local, mesh=mesh, in_specs=(spec, spec, spec, jax.sharding.PartitionSpec(batch_axes, None)), out_specs=spec,
                         check_vma=False)(query, key, value, segment_ids)


# --- cuDNN (GPU) ----------------------------------------------------------------------------------

def packed_layout(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Segment ids -> cuDNN's packed layout (lengths [batch, seq], offsets [batch, seq + 1], int32):
    entry j of a row is segment j + 1's length and start, -1 past its last segment. The bound on
    segments per row is the row length, so no segment is ever dropped."""
    batch, length = segment_ids.shape
    rows, positions = jnp.arange(batch)[:, None], jnp.arange(length, dtype=jnp.int32)[None, :]
    counts = jnp.zeros((batch, length + 1), jnp.int32).at[rows, segment_ids].add(1)[:, 1:]
    # each segment is contiguous: it starts at its first position (padding may come first, as in a prefill)
    starts = jnp.full((batch, length + 1), length, jnp.int32).at[rows, segment_ids].min(positions)[:, 1:]
    present = counts > 0
    lengths = jnp.where(present, counts, -1)
    offsets = jnp.concatenate([jnp.where(present, starts, -1), jnp.full((batch, 1), -1, jnp.int32)], axis=1)
    return lengths, offsets


def cudnn_attention(query: jax.Array, key: jax.Array, value: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """`segment_attention` with cuDNN flash attention. jax.nn.dot_product_attention(implementation="cudnn")
    (jax 0.10.2) takes only one length per row, so packed rows go through the cuDNN op underneath it, which
    takes per-segment offsets and lengths. Padding positions come out as zeros (they carry no loss)."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    lengths, offsets = packed_layout(segment_ids)
    return cudnn.dot_product_attention(query, key, value, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets,
                                       kv_offsets=offsets, scale=query.shape[-1] ** -0.5,
                                       mask_type=cudnn.MaskType.PADDING_CAUSAL)


def cached_attention(query: jax.Array, key: jax.Array, value: jax.Array, cache_key: jax.Array,
                     cache_value: jax.Array, cache_mask: jax.Array, mask: jax.Array) -> jax.Array:
    """Attention of a block of new tokens over a KV cache plus the block itself, reading the cache only
    (generation: the cache is written once after all layers, not copied per layer).

    query: [batch, q, heads, head_dim]; key, value: [batch, q, kv_heads, head_dim] of the block;
    cache_key, cache_value: [batch, kv_heads, max_len, head_dim] (heads before slots: the score and
    value contractions then need no transposed copy of the cache); cache_mask: [batch, max_len] bool (earlier
    slots to attend), or None when no earlier slot holds anything (prefill: the cache is not read);
    mask: [batch, 1, q, q] bool within the block (must let each query see something). Scores and softmax in
    float32. Returns [batch, q, heads, head_dim].
    """
    batch, q_len, heads, head_dim = query.shape
    groups = heads // key.shape[2]
    query = query.reshape(batch, q_len, key.shape[2], groups, head_dim) * jnp.asarray(head_dim**-0.5, query.dtype)
    f32, lowest = jnp.float32, jnp.finfo(jnp.float32).min
    block_scores = jnp.einsum("bqkgd,bpkd->bkgqp", query, key, preferred_element_type=f32)
    block_scores = jnp.where(mask[:, :, None], block_scores, lowest)
    if cache_mask is None:
        probs = jax.nn.softmax(block_scores, axis=-1).astype(value.dtype)
        out = jnp.einsum("bkgqp,bpkd->bqkgd", probs, value, preferred_element_type=f32)
        return out.reshape(batch, q_len, heads, head_dim).astype(value.dtype)
    cache_scores = jnp.einsum("bqkgd,bkld->bkgql", query, cache_key.astype(query.dtype), preferred_element_type=f32)
    cache_scores = jnp.where(cache_mask[:, None, None, None, :], cache_scores, lowest)
    probs = jax.nn.softmax(jnp.concatenate([cache_scores, block_scores], axis=-1), axis=-1).astype(value.dtype)
    max_len = cache_key.shape[2]
    out = (jnp.einsum("bkgql,bkld->bqkgd", probs[..., :max_len], cache_value.astype(value.dtype), preferred_element_type=f32)
           + jnp.einsum("bkgqp,bpkd->bqkgd", probs[..., max_len:], value, preferred_element_type=f32))
    return out.reshape(batch, q_len, heads, head_dim).astype(value.dtype)
