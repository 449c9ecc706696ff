"""Vision-to-language projectors: mlp2x_gelu (LLaVA-1.5), the LDP builder (MobileVLM v1 and the paper's
Table 9 variants) and LDPv2 (MobileVLM V2). Token grids are row-major in both directions of every reshape.

Parameter trees (C_v = vision width, D = LLM hidden, S = squeeze width):
  mlp2x_gelu: mlp/{fc1 [C_v, D], fc2 [D, D]}/{kernel, bias}
  ldp:        mlp/... (when front_mlp), then per block i:
              block_i/depthwise/kernel [3, 3, 1, C]   block_i/{dw_norm, pw_norm}/{scale, bias} [D]
              block_i/se_fc1/{kernel [C, S], bias}    block_i/se_fc2/{kernel [S, C], bias}
              block_i/pointwise/kernel [C, D]
  ldpv2:      mlp/..., peg/{kernel [3, 3, 1, D], bias [D]}
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from mvlm_jax.models.config import ProjectorConfig
from mvlm_jax.models.layers import ACTIVATIONS, DTYPES, LayerNorm, Linear, param_with_axes


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible: round to a multiple of divisor, never below 90 % of value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _square_grid(tokens: jax.Array) -> jax.Array:
    """[batch, side * side, C] -> [batch, side, side, C] (row-major)."""
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"projector needs a square token grid, got {tokens.shape[1]} tokens")
    return rearrange(tokens, "b (h w) c -> b h w c", h=side)


def _adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] averaging weights of torch's adaptive pooling: window i covers
    floor(i * in / out) .. ceil((i + 1) * in / out)."""
    weights = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(grid: jax.Array, side: int) -> jax.Array:
    """AdaptiveAvgPool2d((side, side)): [batch, H, W, C] -> [batch, side, side, C], averaged in float32."""
    rows = jnp.asarray(_adaptive_pool_matrix(grid.shape[1], side))
    cols = jnp.asarray(_adaptive_pool_matrix(grid.shape[2], side))
    return jnp.einsum("oh,pw,bhwc->bopc", rows, cols, grid.astype(jnp.float32)).astype(grid.dtype)


def _shifted_sum(padded: jax.Array, kernel: jax.Array, stride: int, rows: int, cols: int) -> jax.Array:
    """sum_ij padded[:, i + stride * r, j + stride * c] * kernel[i, j]: products in the input dtype,
    accumulated in float32 (as a convolution accumulates). padded: [batch, R, C', ch]; kernel: [3, 3, ch]."""
    span_r, span_c = stride * (rows - 1) + 1, stride * (cols - 1) + 1
    return sum((padded[:, i:i + span_r:stride, j:j + span_c:stride] * kernel[i, j]).astype(jnp.float32)
               for i in range(3) for j in range(3))


def depthwise_conv3x3_forward(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """3x3 depthwise convolution, padding 1. x: [batch, H, W, C]; kernel: [3, 3, C] ->
    [batch, (H - 1) // stride + 1, (W - 1) // stride + 1, C] in x's dtype. Called directly, JAX's autodiff
    differentiates it; the model calls depthwise_conv3x3, the same forward with the backward below."""
    rows, cols = (x.shape[1] - 1) // stride + 1, (x.shape[2] - 1) // stride + 1
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return _shifted_sum(padded, kernel, stride, rows, cols).astype(x.dtype)


depthwise_conv3x3 = jax.custom_vjp(depthwise_conv3x3_forward, nondiff_argnums=(2,))


def _depthwise_fwd(x, kernel, stride):
    return depthwise_conv3x3_forward(x, kernel, stride), (x, kernel)


def _depthwise_bwd(stride, residuals, grad):
    """dx: one correlation of the (dilated) output gradient with the flipped kernel. d_kernel: per tap, a
    sum over [batch, rows, cols] written as a product with ones, inside a loop. Autodiff of the forward
    instead sums nine padded gradients and XLA:CPU fuses the gradient's producers into nine strided
    reductions; this backward makes the demo LDP's forward + backward 3.45x faster (bench.projector_backward)."""
    x, kernel = residuals
    (_, height, width, _), (_, rows, cols, channels) = x.shape, grad.shape
    span_r, span_c = stride * (rows - 1) + 1, stride * (cols - 1) + 1
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))

    def tap(index, d_kernel):  # a loop body is a fusion boundary: `grad` is computed once, not per tap
        window = jax.lax.dynamic_slice(padded, (0, index // 3, index % 3, 0), (x.shape[0], span_r, span_c, channels))
        product = (window[:, ::stride, ::stride] * grad).astype(jnp.float32).reshape(-1, channels)
        return d_kernel.at[index].set(jnp.dot(jnp.ones(product.shape[0]), product, precision="highest"))

    d_kernel = jax.lax.fori_loop(0, 9, tap, jnp.zeros((9, channels), jnp.float32)).reshape(kernel.shape)
    # dx[h, w] = sum_ij g_dilated[h + 1 - i, w + 1 - j] * kernel[i, j]; g_dilated is zero between strided rows.
    dilated = jax.lax.pad(grad, jnp.zeros((), grad.dtype), ((0, 0, 0), (1, height + 1 - span_r, stride - 1),
                                                            (1, width + 1 - span_c, stride - 1), (0, 0, 0)))
    d_x = _shifted_sum(dilated, kernel[::-1, ::-1], 1, height, width)
    return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


depthwise_conv3x3.defvjp(_depthwise_fwd, _depthwise_bwd)


class DepthwiseConv(nn.Module):
    """3x3 depthwise convolution, padding 1 (torch's padding=1), as nine shifted multiply-adds.

    Same parameters as a grouped flax Conv (kernel [3, 3, 1, C], bias [C]); XLA:CPU runs grouped
    convolutions and their gradients several times slower than this sum and its own backward
    (depthwise_conv3x3). x: [batch, H, W, C] ->
    [batch, (H - 1) // stride + 1, (W - 1) // stride + 1, C].
    """

    channels: int
    stride: int = 1
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", param_with_axes(nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=-1),
                                                      (None, None, None, "embed")), (3, 3, 1, self.channels))
        out = depthwise_conv3x3(x.astype(self.dtype), kernel[:, :, 0].astype(self.dtype), self.stride)
        if self.use_bias:
            out = out + self.param("bias", param_with_axes(nn.initializers.zeros, ("embed",)),
                                   (self.channels,)).astype(self.dtype)
        return out


class MLP2xGELU(nn.Module):
    """Linear(C_v, D) -> exact GELU -> Linear(D, D). tokens: [batch, n, C_v] -> [batch, n, D]."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        hidden = Linear(self.features, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name="fc1")(tokens)
        hidden = ACTIVATIONS["gelu"](hidden)
        return Linear(self.features, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="fc2")(hidden)


class InvertedResidual(nn.Module):
    """torchvision MobileNetV3 block with expanded == input channels (no expansion conv):
    DWconv(3x3, stride) -> LN -> Hardswish -> SqueezeExcite -> PWconv(1x1) -> LN (+ input when shapes allow).
    LN is a LayerNorm over channels at each position (timm LayerNorm2d, eps 1e-5).
    x: [batch, H, W, C] -> [batch, ceil(H / stride), ceil(W / stride), features]."""

    features: int
    stride: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        squeeze = make_divisible(channels // 4, 8)
        hidden = DepthwiseConv(channels, self.stride, False, self.dtype, name="depthwise")(x)
        hidden = jax.nn.hard_swish(LayerNorm(1e-5, self.dtype, name="dw_norm")(hidden))
        pooled = jnp.mean(hidden.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
        scale = jax.nn.relu(Linear(squeeze, ("embed", "mlp"), use_bias=True, dtype=self.dtype, name="se_fc1")(pooled))
        scale = Linear(channels, ("mlp", "embed"), use_bias=True, dtype=self.dtype, name="se_fc2")(scale)
        hidden = hidden * jax.nn.hard_sigmoid(scale)
        hidden = Linear(self.features, ("embed", "mlp"), dtype=self.dtype, name="pointwise")(hidden)
        hidden = LayerNorm(1e-5, self.dtype, name="pw_norm")(hidden)
        if self.stride == 1 and channels == self.features:
            hidden = hidden + x
        return hidden


class Projector(nn.Module):
    """tokens: [batch, n, C_v] vision features -> [batch, m, features] LLM embeddings
    (m = n for mlp2x_gelu, n / 4 for both LDPs with the default strides)."""

    config: ProjectorConfig
    features: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = DTYPES[cfg.dtype]
        if cfg.type == "mlp2x_gelu":
            return MLP2xGELU(self.features, dtype, name="mlp")(tokens)
        if cfg.type == "ldpv2":
            grid = _square_grid(MLP2xGELU(self.features, dtype, name="mlp")(tokens))
            pooled = adaptive_avg_pool(grid, cfg.pool_side)
            grid = pooled + DepthwiseConv(self.features, 1, True, dtype, name="peg")(pooled)  # PEG: conv added to input
            return rearrange(grid, "b h w c -> b (h w) c")
        if cfg.type != "ldp":
            raise ValueError(f"unknown projector type {cfg.type!r}; expected mlp2x_gelu, ldp or ldpv2")
        if cfg.front_mlp:
            tokens = MLP2xGELU(self.features, dtype, name="mlp")(tokens)
        grid = _square_grid(tokens)
        for index, stride in enumerate(cfg.block_strides):
            grid = InvertedResidual(self.features, stride, dtype, name=f"block_{index}")(grid)
        return rearrange(grid, "b h w c -> b (h w) c")
