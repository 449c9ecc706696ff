"""Independent PyTorch reference implementations of MobileVLM's projectors.

Written from the official definitions (Meituan-AutoML/MobileVLM, mobilevlm/model/vision_projector.py, and
the paper, arXiv 2312.16886) with plain torch only (torchvision and timm are not needed). Every module's ``state_dict()`` keys are the official MobileVLM
names relative to ``model.mm_projector.``, so

    {"model.mm_projector." + k: v for k, v in module.state_dict().items()}

is a valid checkpoint fragment for the matching ``mm_projector_type``:

- ``MLP2xGELU`` -> ``mlp2x_gelu`` (LLaVA-1.5), keys ``0.*``, ``2.*``.
- ``LDP``       -> ``ldpnet`` (MobileVLM v1), keys ``model.mlp.*``, ``model.mb_block.*``.
- ``LDPv2``     -> ``ldpnetv2`` (MobileVLM V2), keys ``mlp.mlp.*``, ``peg.peg.*``.

All forwards take float32 tokens ``[B, N, C_v]`` with N a perfect square (576 = 24x24 for CLIP ViT-L/14-336,
or e.g. 36 = 6x6 in tiny tests). Token grids are row-major: token t sits at row t // side, column t % side,
both when reshaping tokens to a map and when flattening a map back to tokens.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "make_divisible",
    "tokens_to_map",
    "map_to_tokens",
    "LayerNorm2d",
    "SqueezeExcitation",
    "InvertedResidual",
    "MLP2xGELU",
    "LDP",
    "LDPv2",
    "randomize_",
]


# --------------------------------------------------------------------------------------------- helpers


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """torchvision's ``_make_divisible``: round ``v`` to a multiple of ``divisor``, never below 90 % of v."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _side(n_tokens: int) -> int:
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(f"token count {n_tokens} is not a perfect square")
    return side


def tokens_to_map(x: torch.Tensor) -> torch.Tensor:
    """[B, N, C] -> [B, C, side, side], row-major (token t -> row t // side, col t % side)."""
    b, n, c = x.shape
    side = _side(n)
    return x.transpose(1, 2).reshape(b, c, side, side)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C], row-major (pixel (i, j) -> token i * W + j)."""
    b, c, h, w = x.shape
    return x.flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------------------------- layers


class LayerNorm2d(nn.LayerNorm):
    """timm ``LayerNormAct2d`` with ``act_layer=None``: LayerNorm over channels at every position.

    Input/output [B, C, H, W]. Parameters ``weight`` [C] and ``bias`` [C] (directly on the module, as in
    timm, so the keys are ``<prefix>.weight`` / ``<prefix>.bias``); eps 1e-5.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__(num_channels, eps=eps, elementwise_affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # [B, H, W, C]
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # [B, C, H, W]


class SqueezeExcitation(nn.Module):
    """torchvision ``SqueezeExcitation(C, S, activation=ReLU, scale_activation=Hardsigmoid)``.

    [B, C, H, W] -> [B, C, H, W]: scale = hardsigmoid(fc2(relu(fc1(mean_hw(x))))), output x * scale.
    Keys: ``fc1.weight`` [S, C, 1, 1], ``fc1.bias`` [S], ``fc2.weight`` [C, S, 1, 1], ``fc2.bias`` [C].
    """

    def __init__(self, input_channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.avgpool(x)  # [B, C, 1, 1]
        s = self.fc1(s)
        s = self.activation(s)
        s = self.fc2(s)
        s = self.scale_activation(s)
        return x * s


class InvertedResidual(nn.Module):
    """torchvision MobileNetV3 ``InvertedResidual`` as MobileVLM builds it (expanded == input, SE, "HS").

    Config: kernel 3, use_se=True, activation Hardswish, dilation 1, norm = channel LayerNorm (eps 1e-5).
    Since expanded == input there is no expansion conv. ``block`` is:
      - ``block.0``: depthwise Conv2d(Cin, Cin, 3, stride, padding 1, groups Cin, bias=False)
                     -> LayerNorm2d(Cin) -> Hardswish
      - ``block.1``: SqueezeExcitation(Cin, make_divisible(Cin // 4, 8))
      - ``block.2``: pointwise Conv2d(Cin, Cout, 1, bias=False) -> LayerNorm2d(Cout)
    plus the input when stride == 1 and Cin == Cout.

    [B, Cin, H, W] -> [B, Cout, H', W'] with H' = floor((H - 1) / stride) + 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"illegal stride {stride}")
        self.use_res_connect = stride == 1 and in_channels == out_channels
        squeeze = make_divisible(in_channels // 4, 8)
        self.block = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels,
                          bias=False),
                LayerNorm2d(in_channels),
                nn.Hardswish(),
            ),
            SqueezeExcitation(in_channels, squeeze),
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                LayerNorm2d(out_channels),
            ),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if self.use_res_connect:
            y = y + x
        return y


# --------------------------------------------------------------------------------------------- projectors


class MLP2xGELU(nn.Sequential):
    """``mlp2x_gelu``: Linear(C_v, D) -> GELU (exact erf) -> Linear(D, D).

    [B, N, C_v] -> [B, N, D]. Keys ``0.weight`` [D, C_v], ``0.bias`` [D], ``2.weight`` [D, D], ``2.bias`` [D].
    """

    def __init__(self, vision_width: int, hidden: int):
        super().__init__(
            nn.Linear(vision_width, hidden),
            nn.GELU(approximate="none"),
            nn.Linear(hidden, hidden),
        )


class _LDPNet(nn.Module):
    """Inner ``model`` of ``ldpnet`` (holds ``mlp`` and ``mb_block``)."""

    def __init__(self, vision_width: int, hidden: int, strides: Sequence[int], front_mlp: bool):
        super().__init__()
        self.front_mlp = front_mlp
        if front_mlp:
            self.mlp = nn.Sequential(
                nn.Identity(),
                nn.Linear(vision_width, hidden),
                nn.GELU(approximate="none"),
                nn.Linear(hidden, hidden),
            )
            c = hidden
        else:
            c = vision_width
        blocks = [nn.Identity()]
        for s in strides:
            blocks.append(InvertedResidual(c, hidden, s))
            c = hidden
        self.mb_block = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.front_mlp:
            x = self.mlp(x)  # [B, N, D]
        x = tokens_to_map(x)  # [B, C, side, side]
        x = self.mb_block(x)  # [B, D, side', side']
        return map_to_tokens(x)  # [B, side'^2, D]


class LDP(nn.Module):
    """``ldpnet`` (Lightweight Downsample Projector, MobileVLM v1).

    tokens [B, N, C_v] -> (mlp: Identity, Linear(C_v, D), GELU exact, Linear(D, D)) -> [B, N, D]
    -> row-major map [B, D, side, side] -> mb_block.1 (stride strides[0]) -> mb_block.2 (stride strides[1])
    -> ... -> flatten row-major -> [B, N', D]. With the default strides (1, 2): [B, 576, C_v] -> [B, 144, D]
    (N=36 -> 9 tokens).

    ``front_mlp=False`` drops ``mlp``: the first block then takes C_v channels (its depthwise conv and SE
    work on C_v; its pointwise conv maps to D). A block has a residual iff stride == 1 and Cin == Cout.

    Keys (default config): ``model.mlp.{1,3}.{weight,bias}`` and for k in 1, 2:
    ``model.mb_block.k.block.0.0.weight``, ``model.mb_block.k.block.0.1.{weight,bias}``,
    ``model.mb_block.k.block.1.fc{1,2}.{weight,bias}``, ``model.mb_block.k.block.2.0.weight``,
    ``model.mb_block.k.block.2.1.{weight,bias}``.
    """

    def __init__(self, vision_width: int, hidden: int, strides: Sequence[int] = (1, 2),
                 front_mlp: bool = True):
        super().__init__()
        self.model = _LDPNet(vision_width, hidden, tuple(strides), front_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _FeatureIRLayer(nn.Module):
    """``ldpnetv2``'s ``mlp``: holds ``mlp`` = Sequential(Linear(C_v, D), GELU exact, Linear(D, D))."""

    def __init__(self, vision_width: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(vision_width, hidden),
            nn.GELU(approximate="none"),
            nn.Linear(hidden, hidden),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class _TokenDownLayer(nn.Module):
    """``ldpnetv2``'s ``dwn``: tokens [B, N, C] -> AdaptiveAvgPool2d on the row-major map -> tokens.

    ``dwn.0`` is nn.AdaptiveAvgPool2d(out_shape) when ``out_shape`` is given (the official (12, 12)); with
    ``out_shape=None`` the pool goes to (side // 2, side // 2) of whatever grid comes in.
    """

    def __init__(self, out_shape: Optional[Tuple[int, int]] = None):
        super().__init__()
        self.out_shape = out_shape
        self.dwn = nn.Sequential(nn.AdaptiveAvgPool2d(out_shape if out_shape is not None else (12, 12)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = tokens_to_map(x)  # [B, C, side, side]
        if self.out_shape is None:
            side = m.shape[-1]
            m = F.adaptive_avg_pool2d(m, (side // 2, side // 2))
        else:
            m = self.dwn(m)
        return map_to_tokens(m)  # [B, side'^2, C]


class _PosInjectLayer(nn.Module):
    """``ldpnetv2``'s ``peg``: x + depthwise Conv2d(D, D, 3, stride 1, padding 1, groups D, bias=True)(x)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride=1, padding=1, groups=hidden, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = tokens_to_map(x)  # [B, D, s, s]
        m = self.peg(m) + m
        return map_to_tokens(m)  # [B, s*s, D]


class LDPv2(nn.Module):
    """``ldpnetv2`` (MobileVLM V2).

    [B, N, C_v] -> mlp (Linear, GELU exact, Linear) -> [B, N, D] -> row-major map [B, D, side, side]
    -> AdaptiveAvgPool2d((side // 2, side // 2)) -> PEG (x + dwconv3x3(x)) -> flatten row-major
    -> [B, (side // 2)^2, D]. [B, 576, C_v] -> [B, 144, D]; N=36 -> 9 tokens.

    Keys: ``mlp.mlp.0.weight`` [D, C_v], ``mlp.mlp.0.bias``, ``mlp.mlp.2.weight`` [D, D], ``mlp.mlp.2.bias``,
    ``peg.peg.0.weight`` [D, 1, 3, 3], ``peg.peg.0.bias`` [D]. No LayerNorm, no activation after the MLP.
    ``out_shape`` fixes the pool size (official: (12, 12)); None means half the input grid.
    """

    def __init__(self, vision_width: int, hidden: int, out_shape: Optional[Tuple[int, int]] = None):
        super().__init__()
        self.mlp = _FeatureIRLayer(vision_width, hidden)
        self.dwn = _TokenDownLayer(out_shape)
        self.peg = _PosInjectLayer(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)  # [B, N, D]
        x = self.dwn(x)  # [B, N/4, D]
        x = self.peg(x)  # [B, N/4, D]
        return x


# --------------------------------------------------------------------------------------------- init


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, weight_std: Optional[float] = None) -> nn.Module:
    """Fill every parameter of ``module`` with seeded random values (in place); returns ``module``.

    - LayerNorm weights: 1 + 0.1 * randn; LayerNorm biases and all other biases: 0.1 * randn.
    - Other weights: normal with std ``weight_std`` if given, else 1 / sqrt(fan_in) (fan_in = numel /
      out-dim; e.g. about 0.18 for width 32, 0.33 for a 3x3 depthwise kernel), which keeps activations O(1)
      at any width so parity tolerances stay meaningful.

    Uses a private ``torch.Generator`` seeded with ``seed`` (the global RNG is left alone); the visiting
    order is ``named_modules()`` order, so the result is deterministic for a given module and seed.
    """
    gen = torch.Generator().manual_seed(int(seed))

    def randn(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    for _, mod in module.named_modules():
        is_ln = isinstance(mod, nn.LayerNorm)
        for pname, p in mod.named_parameters(recurse=False):
            if pname == "bias":
                val = 0.1 * randn(p.shape)
            elif is_ln and pname == "weight":
                val = 1.0 + 0.1 * randn(p.shape)
            else:
                if weight_std is not None:
                    std = weight_std
                else:
                    fan_in = max(1, p.numel() // max(1, p.shape[0]))
                    std = 1.0 / math.sqrt(fan_in)
                val = std * randn(p.shape)
            p.copy_(val.to(p.dtype))
    return module
