"""The train step: partition by path patterns, only the trainable part differentiated and optimised,
per-target-token loss, gradient accumulation, learning-rate schedule, non-finite steps rejected."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jit_init import init_params
from mvlm_jax.models import build_model
from mvlm_jax.models.config import LLAMA_PRESETS, PROJECTOR_PRESETS, VISION_PRESETS, VLMConfig
from mvlm_jax.train.optimizer import OptimConfig, decay_mask, make_optimizer, schedule
from mvlm_jax.train.partition import count, is_trainable, merge, split
from mvlm_jax.train.losses import batch_forward, cross_entropy_sum, next_token_loss, token_loss
from mvlm_jax.train.step import init_state, make_train_step

LLM = LLAMA_PRESETS["tiny"]
VLM = VLMConfig(VISION_PRESETS["tiny"], PROJECTOR_PRESETS["ldp"], LLM)
OPTIM = OptimConfig(learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=2, total_steps=10)


def llm_batch(batch=4, seq=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, LLM.vocab_size, (batch, seq + 1))
    mask = (rng.random((batch, seq)) > 0.3).astype(np.float32)
    return {"tokens": jnp.asarray(tokens[:, :-1], jnp.int32), "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
            "loss_mask": jnp.asarray(mask), "segment_ids": jnp.ones((batch, seq), jnp.int32),
            "positions": jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))}


def vlm_batch(batch=2):
    seq = VLM.num_visual_tokens + 8
    base = llm_batch(batch, seq, seed=1)
    images = jnp.asarray(np.random.default_rng(2).normal(size=(batch, 1, 48, 48, 3)), jnp.float32)
    return {**base, "images": images, "image_slots": jnp.asarray([[1]] * batch, jnp.int32)}


def setup(config, patterns, accumulation=1, frozen=()):
    params = init_params(config, jax.random.key(0))
    trainable, frozen_part = split(params, is_trainable(patterns, frozen))
    optimizer = make_optimizer(OPTIM)
    loss = next_token_loss(batch_forward(build_model(config), config))
    step = make_train_step(loss, optimizer, schedule(OPTIM), accumulation)
    return params, init_state(trainable, frozen_part, optimizer, jax.random.key(1)), step


def test_loss_is_the_mean_over_target_tokens():
    params, state, step = setup(LLM, [".*"])
    batch = llm_batch()
    _, metrics = jax.jit(step)(state, batch)
    logits = build_model(LLM).apply({"params": params}, batch["tokens"])
    logp = jax.nn.log_softmax(logits, -1)
    token_loss = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    expected = float(jnp.sum(token_loss * batch["loss_mask"]) / jnp.sum(batch["loss_mask"]))
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    total, n = cross_entropy_sum(logits, batch["targets"], batch["loss_mask"])
    assert float(n) == float(batch["loss_mask"].sum()) and np.isclose(float(total / n), expected, rtol=1e-5)


def test_label_smoothed_token_loss_matches_optax_one_hot():
    """losses.smoothed_cross_entropy (no one-hot built) against optax's smoothed one-hot cross-entropy;
    the plain loss differs from it."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(scale=3.0, size=(2, 5, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, (2, 5)), jnp.int32)
    mask = jnp.asarray(rng.random((2, 5)) > 0.3, jnp.float32)
    total, n = token_loss(label_smoothing=0.2)(logits, targets, mask)
    expected = optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(targets, 11), 0.2))
    np.testing.assert_allclose(float(total), float(jnp.sum(expected * mask)), rtol=1e-6)
    assert float(n) == float(mask.sum())
    plain, _ = token_loss()(logits, targets, mask)
    assert abs(float(plain) - float(total)) > 0.01 * float(total)


def test_gradient_accumulation_equals_one_big_batch():
    _, state, step_one = setup(LLM, [".*"], accumulation=1)
    _, _, step_four = setup(LLM, [".*"], accumulation=4)
    batch = llm_batch(batch=8)
    one, m1 = jax.jit(step_one)(state, batch)
    four, m4 = jax.jit(step_four)(state, batch)
    np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m4["grad_norm"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one["trainable"]), jax.tree.leaves(four["trainable"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_stage1_trains_and_optimises_only_the_projector():
    params, state, step = setup(VLM, [r"^projector/"])
    assert set(state["trainable"]) == {"projector"} and set(state["frozen"]) == {"vision", "llm"}
    moments = state["opt_state"][1][0].mu  # chain(clip, adamw) -> adamw's ScaleByAdamState
    assert count(moments) == count(params["projector"]) and set(moments) == {"projector"}
    jitted = jax.jit(step)
    # The second batch ends in padding and has one image slot empty: the step counts real tokens and images
    # (what tokens/s and MFU count), never padding or empty slots.
    padded = vlm_batch()
    padded["segment_ids"] = padded["segment_ids"].at[:, -3:].set(0)
    padded["loss_mask"] = padded["loss_mask"].at[:, -3:].set(0)
    padded["image_slots"] = padded["image_slots"].at[1].set(-1)
    new, metrics = jitted(jitted(state, vlm_batch())[0], padded)  # two steps: the warmup starts at learning rate 0
    assert bool(metrics["finite"]) and int(new["step"]) == 2
    assert int(metrics["real_tokens"]) == int((padded["segment_ids"] > 0).sum()) == padded["tokens"].size - 6
    assert int(metrics["images"]) == 1
    for part in ("vision", "llm"):
        for a, b in zip(jax.tree.leaves(new["frozen"][part]), jax.tree.leaves(params[part])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new["trainable"]["projector"]),
                                                       jax.tree.leaves(params["projector"]))]
    assert all(changed)


def compiled_flops(function, *args) -> float:
    return jax.jit(function).lower(*args).compile().cost_analysis()["flops"]


def test_frozen_tower_costs_no_backward_pass():
    """Stage 1 saves the tower's backward (about twice its forward) against training the tower too."""
    _, stage1, step1 = setup(VLM, [r"^projector/"])
    _, with_tower, step_tower = setup(VLM, [r"^projector/", r"^vision/"])
    batch = vlm_batch()
    params = init_params(VLM, jax.random.key(0))
    model = build_model(VLM)
    tower_forward = compiled_flops(lambda p, x: model.apply({"params": p}, x[:, 0], method=lambda m, i: m.vision(i)),
                                   params, batch["images"])
    saved = compiled_flops(step_tower, with_tower, batch) - compiled_flops(step1, stage1, batch)
    assert saved > 1.5 * tower_forward > 0


@pytest.mark.parametrize("projector", ["ldp", "ldpv2", "mlp2x_gelu"])
def test_projector_flops_formula_matches_xla(projector):
    """The MFU's projector term against XLA's own count of the compiled forward (which also counts the
    elementwise work the formula leaves out: norms, activations, pooling)."""
    from mvlm_jax.models.projectors import Projector
    from mvlm_jax.train.metrics import projector_forward_flops

    config, width, hidden, tokens = PROJECTOR_PRESETS[projector], 256, 256, 24 * 24
    module = Projector(config, hidden)
    features = jnp.zeros((1, tokens, width), jnp.float32)
    params = module.init(jax.random.key(0), features)
    measured = compiled_flops(lambda p, x: module.apply(p, x), params, features)
    formula = projector_forward_flops(config, width, hidden, tokens)
    assert 0.85 * measured < formula <= measured, (formula, measured)


def test_lora_stage_trains_adapters_and_projector_only():
    from mvlm_jax.models.config import LoraConfig
    config = dataclasses.replace(VLM, llm=dataclasses.replace(LLM, lora=LoraConfig(rank=4, dropout=0.0)))
    params, state, _ = setup(config, [r"^projector/", r"/lora_[ab]$"])
    lora = sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params["llm"])
               if "lora_" in jax.tree_util.keystr(path))
    assert count(state["trainable"]) == count(params["projector"]) + lora
    assert "vision" not in state["trainable"] and count(merge(state["trainable"], state["frozen"])) == count(params)


def test_non_finite_step_leaves_the_state_unchanged():
    _, state, step = setup(LLM, [".*"])
    state["trainable"]["final_norm"]["scale"] = state["trainable"]["final_norm"]["scale"].at[0].set(jnp.nan)
    new, metrics = jax.jit(step)(state, llm_batch())
    assert not bool(metrics["finite"]) and int(new["step"]) == 0
    for a, b in zip(jax.tree.leaves(new["trainable"]), jax.tree.leaves(state["trainable"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(new["opt_state"]), jax.tree.leaves(state["opt_state"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_schedule_and_weight_decay_mask():
    lr = schedule(OptimConfig(learning_rate=1.0, min_learning_rate=0.1, warmup_steps=10, total_steps=110))
    assert float(lr(0)) == 0.0 and np.isclose(float(lr(10)), 1.0) and np.isclose(float(lr(110)), 0.1)
    assert np.isclose(float(lr(60)), 0.55)  # half-way down the cosine
    mask = decay_mask({"layers": {"attn": {"q_proj": {"kernel": 0, "lora_a": 0}}, "input_norm": {"scale": 0}},
                       "fc1": {"kernel": 0, "bias": 0}, "embed_tokens": {"embedding": 0}})
    assert mask["layers"]["attn"]["q_proj"] == {"kernel": True, "lora_a": True}
    assert mask["layers"]["input_norm"]["scale"] is False and mask["fc1"] == {"kernel": True, "bias": False}
    assert mask["embed_tokens"]["embedding"] is True
    assert isinstance(make_optimizer(OPTIM), optax.GradientTransformation)


def test_lr_multipliers_scale_the_step_of_matching_parameters_only():
    """LLaVA's mm_projector_lr as a config: the projector's AdamW step (decay included) is 10x, the rest 1x."""
    config = dataclasses.replace(OPTIM, weight_decay=0.1)
    # A tree shaped like the VLM's top level (a real one costs half a minute of compiling for nothing)
    params = {name: {"fc": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}} for name in ("projector", "llm", "vision")}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    plain = make_optimizer(config)
    scaled = make_optimizer(dataclasses.replace(config, lr_multipliers=(("^projector/", 10.0), ("^llm/", 1.0))))
    state = scaled.init(params)  # step 0 of the warmup has learning rate 0: compare the second updates
    _, state = scaled.update(grads, state, params)
    _, plain_state = plain.update(grads, plain.init(params), params)
    base, _ = plain.update(grads, plain_state, params)
    update, _ = scaled.update(grads, state, params)
    for name in ("projector", "llm", "vision"):
        factor = 10.0 if name == "projector" else 1.0
        for a, b in zip(jax.tree.leaves(update[name]), jax.tree.leaves(base[name])):
            assert np.abs(np.asarray(b)).max() > 0
            np.testing.assert_allclose(np.asarray(a), factor * np.asarray(b), rtol=1e-6)
    # The first matching pattern wins: a later, broader one does not override it.
    first = make_optimizer(dataclasses.replace(config, lr_multipliers=(("^projector/", 10.0), (".*", 3.0))))
    first_state = first.init(params)
    _, first_state = first.update(grads, first_state, params)
    update, _ = first.update(grads, first_state, params)
    for name, factor in (("projector", 10.0), ("llm", 3.0)):
        for a, b in zip(jax.tree.leaves(update[name]), jax.tree.leaves(base[name])):
            np.testing.assert_allclose(np.asarray(a), factor * np.asarray(b), rtol=1e-6)
    # Without multipliers the chain is clip + AdamW only, so older checkpoints' optimizer state still fits.
    assert len(plain.init(params)) == 2 and len(state) == 3
    with pytest.raises(ValueError, match="lr_multipliers"):
        make_optimizer(dataclasses.replace(config, lr_multipliers=(("^projector/", -1.0),)))
    with pytest.raises(ValueError, match="lr_multipliers"):  # the pairs flattened, as a repeated flag gives
        make_optimizer(dataclasses.replace(config, lr_multipliers=("^projector/", 10.0)))
    with pytest.raises(re.error):
        make_optimizer(dataclasses.replace(config, lr_multipliers=(("(", 2.0),)))
