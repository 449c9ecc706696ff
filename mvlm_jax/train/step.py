"""The train step: a pure function `step(state, batch) -> (state, metrics)` from a factory, and the
validation step: the same loss, forward only. Both receive the loss from the stage setup
(mvlm_jax.train.losses); they know neither the model nor the loss.

Only the trainable part of the parameters is differentiated; the frozen part (the vision tower, a frozen
LLM in VLM stage 1) enters as a constant, so no backward pass runs through it and it has no gradient or
optimizer state. The loss is averaged per target token of the whole global batch (gradient accumulation
sums per-micro-batch sums, then divides once). A step whose loss or gradients are not finite leaves the
state unchanged and reports `finite = False`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mvlm_jax.train.losses import LossSum
from mvlm_jax.train.partition import merge

State = dict[str, Any]  # {"trainable", "frozen", "opt_state", "step", "rng"}
Batch = dict[str, jax.Array]

# XLA:CPU in this jaxlib hands dots to YNNPACK fusions by default; on the 2-core AVX2 machine they ran the
# train step 1.16x slower than XLA's own (Eigen) dots (bench.train_throughput, docs/PERFORMANCE.md).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(platform: str) -> dict[str, str]:
    """XLA options for jitting the train step on `platform` ("cpu", "gpu", "tpu")."""
    return dict(CPU_COMPILER_OPTIONS) if platform == "cpu" else {}


def micro_batches(batch: Batch, accumulation_steps: int) -> Batch:
    """[batch, ...] -> [accumulation_steps, batch / accumulation_steps, ...]. Strided (rows i, i + A, ...):
    every device keeps feeding its own rows, where a contiguous split would move inputs between data/fsdp
    shards for every micro-batch."""
    return jax.tree.map(lambda x: jnp.swapaxes(
        x.reshape(x.shape[0] // accumulation_steps, accumulation_steps, *x.shape[1:]), 0, 1), batch)


def _split_params(loss_sum: LossSum) -> Callable[[Any, Any, Batch, jax.Array], tuple[jax.Array, jax.Array]]:
    """loss_sum over (trainable, frozen): differentiating by the first argument leaves the frozen part out."""
    return lambda trainable, frozen, batch, rng: loss_sum(merge(trainable, frozen), batch, rng)


def make_train_step(loss_sum: LossSum, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    accumulation_steps: int = 1) -> Callable[[State, Batch], tuple[State, dict]]:
    """step(state, batch) -> (state, metrics) minimising `loss_sum` (mvlm_jax.train.losses) over the
    trainable part; batch: the global batch of the batch contract, [batch, seq] arrays."""
    grad_fn = jax.value_and_grad(_split_params(loss_sum), has_aux=True)

    def step(state: State, batch: Batch) -> tuple[State, dict]:
        rng, step_rng = jax.random.split(state["rng"])
        micro = micro_batches(batch, accumulation_steps)

        def accumulate(carry, inputs):
            grads, total, count = carry
            micro_batch, index = inputs
            (micro_total, micro_count), micro_grads = grad_fn(state["trainable"], state["frozen"], micro_batch,
                                                              jax.random.fold_in(step_rng, index))
            return (jax.tree.map(jnp.add, grads, micro_grads), total + micro_total, count + micro_count), None

        zeros = jax.tree.map(jnp.zeros_like, state["trainable"])
        (grads, total, count), _ = jax.lax.scan(accumulate, (zeros, jnp.float32(0), jnp.float32(0)),
                                                (micro, jnp.arange(accumulation_steps)))
        denominator = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        loss = total / denominator
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = {"trainable": keep(trainable, state["trainable"]), "frozen": state["frozen"],
                     "opt_state": keep(opt_state, state["opt_state"]),
                     "step": state["step"] + finite.astype(state["step"].dtype), "rng": rng}
        # Real tokens (in a segment: loss-bearing or context) and images of the global batch: what
        # tokens/s and MFU count, padding excluded.
        if "labels" in batch:  # a classifier's batch: images only
            real = {"real_tokens": jnp.int32(0), "images": jnp.int32(batch["labels"].shape[0])}
        else:
            real = {"real_tokens": jnp.sum(batch["segment_ids"] > 0)}
        if "image_slots" in batch:
            real["images"] = jnp.sum(batch["image_slots"] >= 0)
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state["step"]),
                   "target_tokens": count, "finite": finite, **real}
        return new_state, metrics

    return step


def make_eval_step(loss_sum: LossSum, accumulation_steps: int = 1) -> Callable[[State, Batch], dict]:
    """eval_step(state, batch) -> {"loss_sum", "target_tokens"} (float32 scalars): the train step's loss,
    forward only, over the same micro-batches (a forward over the whole global batch at once would hold
    `accumulation_steps` times the logits). `loss_sum` must be deterministic (a model without dropout); the
    state is read, never changed."""
    loss_sum = _split_params(loss_sum)

    def eval_step(state: State, batch: Batch) -> dict:
        def accumulate(carry, micro_batch):
            total, count = loss_sum(state["trainable"], state["frozen"], micro_batch, jax.random.key(0))
            return (carry[0] + total, carry[1] + count), None

        (total, count), _ = jax.lax.scan(accumulate, (jnp.float32(0), jnp.float32(0)),
                                         micro_batches(batch, accumulation_steps))
        return {"loss_sum": total, "target_tokens": count}

    return eval_step


def init_optimizer_state(trainable: Any, optimizer: optax.GradientTransformation, rng: jax.Array) -> State:
    """The state beside the parameters: {"opt_state", "step", "rng"}."""
    return {"opt_state": optimizer.init(trainable), "step": jnp.zeros((), jnp.int32), "rng": rng}


def init_state(trainable: Any, frozen: Any, optimizer: optax.GradientTransformation, rng: jax.Array) -> State:
    return {"trainable": trainable, "frozen": frozen, **init_optimizer_state(trainable, optimizer, rng)}
