"""Everything a run compiles, built from the config without touching data or weights: mesh, model,
optimizer, the abstract sharded state, the jitted step and the jitted validation loss. Shared by the
trainer and `plan`."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data_pipelines.errors import BadInput
from mvlm_jax import sharding
from mvlm_jax.models import build_model, example_inputs
from mvlm_jax.models.config import ModelConfig, VLMConfig
from mvlm_jax.train import setup
from mvlm_jax.train.optimizer import make_optimizer, schedule
from mvlm_jax.train.partition import is_trainable, split
from mvlm_jax.train.step import compiler_options, init_state, make_eval_step, make_train_step


def validate(config: ml_collections.ConfigDict, devices: int) -> None:
    """Configuration errors, before anything compiles."""
    mesh_shape = setup.mesh_config(config).resolve(devices)
    batch_shards = mesh_shape[0] * mesh_shape[1]
    if config.train.batch_size % config.train.accumulation_steps:
        raise BadInput(f"config.train.batch_size {config.train.batch_size} is not a multiple of "
                         f"accumulation_steps {config.train.accumulation_steps}")
    micro_batch = config.train.batch_size // config.train.accumulation_steps
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


def build_run(config: ml_collections.ConfigDict, devices: list | None = None) -> Run:
    devices = devices if devices is not None else jax.devices()
    validate(config, len(devices))
    mesh = sharding.make_mesh(setup.mesh_config(config), devices)
    model_config = setup.model_config(config.model)  # kept as configured ("auto"): what checkpoints record
    lora = model_config.llm.lora if isinstance(model_config, VLMConfig) else model_config.lora
    # the model runs the attention kernel resolved for the devices it compiles for (a TPU topology in `plan`)
    model = eval_model = build_model(setup.for_platform(model_config, devices[0].platform))  # eval: no dropout
    if lora is not None and lora.dropout > 0:
        model = model.clone(deterministic=False)
    optim = setup.optim_config(config)
    optimizer, lr_schedule = make_optimizer(optim), schedule(optim)

    # Abstract state and its shardings, from the one rules table.
    init_fn = lambda key: model.init(key, *example_inputs(model_config))["params"]  # noqa: E731
    boxed = jax.eval_shape(init_fn, jax.random.key(0))
    param_shardings = sharding.mesh_shardings(sharding.logical_specs(boxed), mesh)
    trainable_of = is_trainable(config.train.trainable, config.train.frozen)
    trainable_abs, frozen_abs = split(nn.unbox(boxed), trainable_of)
    trainable_sh, frozen_sh = split(param_shardings, trainable_of)
    if not jax.tree.leaves(trainable_abs):
        raise ValueError(f"config.train.trainable {list(config.train.trainable)} matches no parameter")
    opt_abs = jax.eval_shape(optimizer.init, trainable_abs)
    replicated = NamedSharding(mesh, PartitionSpec())
    state_shardings = {"trainable": trainable_sh, "frozen": frozen_sh,
                       "opt_state": _opt_state_shardings(opt_abs, trainable_abs, trainable_sh, mesh),
                       "step": replicated, "rng": replicated}
    abstract = jax.eval_shape(lambda t, f, k: init_state(t, f, optimizer, k), trainable_abs, frozen_abs,
                              jax.random.key(0))
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                  state_shardings)
    batch_sharding = sharding.batch_sharding(mesh)
    step_fn = make_train_step(model, optimizer, lr_schedule, config.train.accumulation_steps)
    with sharding.activate(mesh):
        jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, replicated), donate_argnums=0,
                         compiler_options=compiler_options(devices[0].platform))
        jitted_eval = jax.jit(make_eval_step(eval_model, config.train.accumulation_steps),
                              in_shardings=(state_shardings, batch_sharding), out_shardings=replicated,
                              compiler_options=compiler_options(devices[0].platform))
    return Run(mesh, model, model_config, optimizer, trainable_of, param_shardings, state_shardings, abstract_state,
               batch_sharding, replicated, jitted, jitted_eval)


def abstract_batch(config: ml_collections.ConfigDict, run: Run) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch a step receives, as ShapeDtypeStructs (for ahead-of-time compilation)."""
    import jax.numpy as jnp

    batch, seq = config.train.batch_size, config.data.seq_len
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=run.batch_sharding)  # noqa: E731
    out = {"tokens": spec((batch, seq), jnp.int32), "targets": spec((batch, seq), jnp.int32),
           "loss_mask": spec((batch, seq), jnp.float32), "segment_ids": spec((batch, seq), jnp.int32),
           "positions": spec((batch, seq), jnp.int32)}
    if isinstance(run.model_config, VLMConfig):
        size, per_row = run.model_config.vision.image_size, config.data.images_per_row
        out["images"] = spec((batch, per_row, size, size, 3), jnp.float32)
        out["image_slots"] = spec((batch, per_row), jnp.int32)
    return out
