"""Everything a run compiles, built from the parsed experiment (mvlm_jax.train.experiment) without
touching data or weights: mesh, model, loss, optimizer, the abstract sharded state, the jitted step and the
jitted validation loss. The stage setup: the one place that looks at the model family. Shared by the
trainer and `plan`."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data_pipelines.errors import BadInput
from mvlm_jax import sharding
from mvlm_jax.models import build_model, example_inputs
from mvlm_jax.models.config import ClassifierConfig, ModelConfig, VLMConfig
from mvlm_jax.train.experiment import Experiment, for_platform
from mvlm_jax.train.losses import batch_forward, label_loss, next_token_loss, token_loss
from mvlm_jax.train.metrics import step_flops, trained_llm_share
from mvlm_jax.train.optimizer import make_optimizer, schedule
from mvlm_jax.train.partition import is_trainable, split
from mvlm_jax.train.step import compiler_options, init_state, make_eval_step, make_train_step


def validate(experiment: Experiment, devices: int) -> None:
    """Configuration errors, before anything compiles."""
    mesh_shape = experiment.mesh.resolve(devices)
    batch_shards = mesh_shape[0] * mesh_shape[1]
    train = experiment.train
    if train.batch_size % train.accumulation_steps:
        raise BadInput(f"config.train.batch_size {train.batch_size} is not a multiple of "
                       f"accumulation_steps {train.accumulation_steps}")
    micro_batch = train.batch_size // train.accumulation_steps
    if micro_batch % batch_shards:
        raise BadInput(f"micro-batch {micro_batch} does not divide over the mesh's data x fsdp = {batch_shards} "
                         "devices; change config.train.batch_size or config.mesh")


def _opt_state_shardings(abstract_opt: Any, trainable_abstract: Any, trainable_shardings: Any, mesh: Mesh) -> Any:
    """Moments shaped like the trainable parameters share their shardings; everything else is replicated."""
    structure = jax.tree.structure(trainable_abstract)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda node: trainable_shardings if jax.tree.structure(node) == structure else replicated,
                        abstract_opt, is_leaf=lambda node: jax.tree.structure(node) == structure)


@dataclasses.dataclass
class Run:
    mesh: Mesh
    rules: sharding.Rules  # the logical-axis rules the step traces with (config.mesh.rules)
    model: nn.Module
    model_config: ModelConfig
    optimizer: Any
    trainable_of: Callable[[str], bool]
    param_shardings: Any
    state_shardings: Any
    abstract_state: Any  # ShapeDtypeStructs with shardings
    batch_sharding: NamedSharding
    replicated: NamedSharding
    step: Any  # jitted step(state, batch) -> (state, metrics), state donated
    eval_step: Any  # jitted eval_step(state, batch) -> {"loss_sum", "target_tokens"}, replicated; compiled on first use
    step_flops: Callable[[int, int, int], float]  # (real tokens, seq_len, images) -> training FLOPs of a step

    def activate(self):
        """The scope the step and the model trace in: this run's mesh and rules."""
        return sharding.activate(self.mesh, self.rules)


def build_run(experiment: Experiment, devices: list | None = None) -> Run:
    devices = devices if devices is not None else jax.devices()
    validate(experiment, len(devices))
    mesh, rules = sharding.make_mesh(experiment.mesh, devices), experiment.mesh.rules
    model_config = experiment.model  # kept as configured ("auto"): what checkpoints record
    lora = (None if isinstance(model_config, ClassifierConfig)
            else model_config.llm.lora if isinstance(model_config, VLMConfig) else model_config.lora)
    # the model runs the attention kernel resolved for the devices it compiles for (a TPU topology in `plan`)
    model = eval_model = build_model(for_platform(model_config, devices[0].platform))  # eval: no dropout
    if lora is not None and lora.dropout > 0:
        model = model.clone(deterministic=False)
    # The stage's loss: the model family's forward, the configured loss.
    classifier = isinstance(model_config, ClassifierConfig)
    if classifier != (experiment.loss.kind == "sigmoid_cross_entropy"):
        raise BadInput(f"config.loss.kind {experiment.loss.kind!r} does not fit config.model.kind: a classifier "
                       "trains with sigmoid_cross_entropy, an LLM or VLM with cross_entropy")
    if classifier:
        train_loss = eval_loss = label_loss(batch_forward(model, model_config), model_config.label_key,
                                            model_config.position_weight)
    else:
        tokens_loss = token_loss(experiment.loss.kind, experiment.loss.label_smoothing)
        train_loss = next_token_loss(batch_forward(model, model_config), tokens_loss)
        eval_loss = next_token_loss(batch_forward(eval_model, model_config), tokens_loss)
    optimizer, lr_schedule = make_optimizer(experiment.optim), schedule(experiment.optim)

    # Abstract state and its shardings, from the rules table.
    init_fn = lambda key: model.init(key, *example_inputs(model_config))["params"]  # noqa: E731
    abstract_params, param_shardings = sharding.abstract_sharded(init_fn, mesh, rules)
    train = experiment.train
    trainable_of = is_trainable(train.trainable, train.frozen)
    trainable_abs, frozen_abs = split(abstract_params, trainable_of)
    trainable_sh, frozen_sh = split(param_shardings, trainable_of)
    if not jax.tree.leaves(trainable_abs):
        raise ValueError(f"config.train.trainable {list(train.trainable)} matches no parameter")
    opt_abs = jax.eval_shape(optimizer.init, trainable_abs)
    replicated = NamedSharding(mesh, PartitionSpec())
    state_shardings = {"trainable": trainable_sh, "frozen": frozen_sh,
                       "opt_state": _opt_state_shardings(opt_abs, trainable_abs, trainable_sh, mesh),
                       "step": replicated, "rng": replicated}
    abstract = jax.eval_shape(lambda t, f, k: init_state(t, f, optimizer, k), trainable_abs, frozen_abs,
                              jax.random.key(0))
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                  state_shardings)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    step_fn = make_train_step(train_loss, optimizer, lr_schedule, train.accumulation_steps)
    with sharding.activate(mesh, rules):
        jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, replicated), donate_argnums=0,
                         compiler_options=compiler_options(devices[0].platform))
        jitted_eval = jax.jit(make_eval_step(eval_loss, train.accumulation_steps),
                              in_shardings=(state_shardings, batch_sharding), out_shardings=replicated,
                              compiler_options=compiler_options(devices[0].platform))
    share = trained_llm_share(model_config, trainable_abs, frozen_abs)
    flops = lambda tokens, seq_len, images: step_flops(model_config, tokens, seq_len, images, share)  # noqa: E731
    return Run(mesh, rules, model, model_config, optimizer, trainable_of, param_shardings, state_shardings,
               abstract_state, batch_sharding, replicated, jitted, jitted_eval, flops)


def abstract_batch(experiment: Experiment, run: Run) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch a step receives, as ShapeDtypeStructs (for ahead-of-time compilation)."""
    import jax.numpy as jnp

    batch, seq = experiment.train.batch_size, experiment.train.seq_len
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=run.batch_sharding)  # noqa: E731
    out = {"tokens": spec((batch, seq), jnp.int32), "targets": spec((batch, seq), jnp.int32),
           "loss_mask": spec((batch, seq), jnp.float32), "segment_ids": spec((batch, seq), jnp.int32),
           "positions": spec((batch, seq), jnp.int32)}
    if isinstance(run.model_config, ClassifierConfig):
        size, classes = run.model_config.vision.image_size, run.model_config.num_classes
        out = {"images": spec((batch, size, size, 3), jnp.float32), "labels": spec((batch, classes), jnp.float32),
               "weights": spec((batch,), jnp.float32)}
        if run.model_config.label_rows:
            out[run.model_config.label_key] = spec((batch, run.model_config.label_rows, classes), jnp.float32)
        return out
    if isinstance(run.model_config, VLMConfig):
        size, per_row = run.model_config.vision.image_size, experiment.train.images_per_row
        out["images"] = spec((batch, per_row, size, size, 3), jnp.float32)
        out["image_slots"] = spec((batch, per_row), jnp.int32)
    return out
