"""What a stage minimises, chosen by the stage setup (mvlm_jax.train.run.build_run) and handed to the step
factories (mvlm_jax.train.step), which know neither the model nor the loss.

A loss is `loss_sum(params, batch, rng) -> (sum of token losses, number of target tokens)`, both float32
scalars over one micro-batch of the batch contract; the step divides the sums of all micro-batches once,
so the loss is the mean per target token of the whole global batch.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mvlm_jax.models.config import ClassifierConfig, ModelConfig, VLMConfig

Batch = dict[str, jax.Array]
# (params, batch, rng) -> float32 logits [batch, seq, vocab] (a classifier: [batch, classes])
Forward = Callable[[Any, Batch, jax.Array], jax.Array]
TokenLoss = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
LossSum = Callable[[Any, Batch, jax.Array], tuple[jax.Array, jax.Array]]


def batch_forward(model: nn.Module, config: ModelConfig) -> Forward:
    """The model's forward over a batch dict: a VLM reads `images` and `image_slots` besides the tokens;
    an LLM reads the tokens only; a classifier reads `images` [batch, H, W, 3]. `rng` feeds dropout (LoRA),
    if the model has any."""
    if isinstance(config, ClassifierConfig):
        def forward(params, batch, rng):
            del rng
            return model.apply({"params": params}, batch["images"])
    elif isinstance(config, VLMConfig):
        def forward(params, batch, rng):
            return model.apply({"params": params}, batch["tokens"], batch["images"], batch["image_slots"],
                               batch["segment_ids"], batch["positions"], rngs={"dropout": rng})
    else:
        def forward(params, batch, rng):
            return model.apply({"params": params}, batch["tokens"], batch["segment_ids"], batch["positions"],
                               rngs={"dropout": rng})
    return forward


def cross_entropy_sum(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of masked token losses, number of target tokens), in float32."""
    logits = logits.astype(jnp.float32)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    mask = loss_mask.astype(jnp.float32)
    return jnp.sum(token_loss * mask), jnp.sum(mask)


def smoothed_cross_entropy(label_smoothing: float) -> TokenLoss:
    """Cross-entropy against targets smoothed as (1 - e) * one_hot + e / vocab (Szegedy et al. 2016,
    arXiv 1512.00567, section 7), written as (1 - e) * CE + e * (logsumexp - mean logit) so that no
    [batch, seq, vocab] one-hot is built."""
    def token_loss_sum(logits, targets, loss_mask):
        logits = logits.astype(jnp.float32)
        plain = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        uniform = jax.nn.logsumexp(logits, axis=-1) - jnp.mean(logits, axis=-1)
        mask = loss_mask.astype(jnp.float32)
        return jnp.sum(((1.0 - label_smoothing) * plain + label_smoothing * uniform) * mask), jnp.sum(mask)

    return token_loss_sum


# The values of config.loss.kind: next-token cross-entropy for LLMs and VLMs, per-class sigmoid
# cross-entropy for classifiers (multi-label: big_vision's ImageNet-21k recipe trains with it).
KINDS = ("cross_entropy", "sigmoid_cross_entropy")


def token_loss(kind: str = "cross_entropy", label_smoothing: float = 0.0) -> TokenLoss:
    """The token loss of config.loss (`kind` cross_entropy; checked when the config is parsed)."""
    del kind  # label smoothing 0 keeps the plain function (the same program as before it)
    return smoothed_cross_entropy(label_smoothing) if label_smoothing else cross_entropy_sum


def label_loss(forward: Forward, key: str = "labels", position_weight: float = 0.0) -> LossSum:
    """loss_sum(params, batch, rng) of a classifier: the sigmoid cross-entropy of each class logit against
    batch[key]: "labels" ([batch, classes], 1 = present), or for the "tokens" and "cells" heads
    "token_labels" or "cell_labels" ([batch, tokens or cells, classes]), summed over the rows of weight 1
    (batch["weights"] [batch]; 0: a padding row), and the number of their (image, token or cell; class)
    pairs, so that the step's loss is the mean per class and image (or token, or cell). With
    `position_weight` the forward also returns position logits [batch, tokens, 2 * cells] (ImageClassifier),
    and the loss adds `position_weight` times the mean per token of the softmax cross-entropy of its row plus
    that of its column: the cell of a `cells` x `cells` grid that the token (row-major, square) lies in."""
    def loss_sum(params, batch, rng):
        labels, weights = batch[key].astype(jnp.float32), batch["weights"].astype(jnp.float32)
        outputs = forward(params, batch, rng)
        logits, positions = outputs if position_weight else (outputs, None)
        losses = optax.sigmoid_binary_cross_entropy(logits, labels)
        count = jnp.sum(weights) * math.prod(labels.shape[1:])
        total = jnp.sum(losses * weights.reshape(weights.shape + (1,) * (losses.ndim - 1)))
        if position_weight:
            cells, tokens = positions.shape[-1] // 2, positions.shape[1]
            side = math.isqrt(tokens)
            index = jnp.broadcast_to(jnp.arange(tokens), positions.shape[:2])
            row, col = (index // side) * cells // side, (index % side) * cells // side  # the token's cell
            ce = (optax.softmax_cross_entropy_with_integer_labels(positions[..., :cells], row)
                  + optax.softmax_cross_entropy_with_integer_labels(positions[..., cells:], col))
            position_mean = jnp.sum(ce * weights[:, None]) / jnp.maximum(jnp.sum(weights) * tokens, 1.0)
            total = total + position_weight * position_mean * count
        return total, count

    return loss_sum


def next_token_loss(forward: Forward, loss: TokenLoss = cross_entropy_sum) -> LossSum:
    """loss_sum(params, batch, rng): `loss` of the forward's logits against batch["targets"] over
    batch["loss_mask"]."""
    def loss_sum(params, batch, rng):
        return loss(forward(params, batch, rng), batch["targets"], batch["loss_mask"])

    return loss_sum
