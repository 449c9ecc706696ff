"""The state a run starts from when its workdir holds no checkpoint: every `init_from` source restored
straight into the run's sharded layout, and a random initialisation of only what no source covers.

Restores go through orbax with the run's abstract parameters as the target (ShapeDtypeStructs carrying
NamedShardings): each process reads the slices its devices hold, so no host ever has a full unsharded copy
of a model. The random initialisation is one jitted program whose outputs are the uncovered leaves only;
XLA drops the generators of every other parameter, so covered parameters are never drawn at random.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax

from mvlm_jax import sharding
from mvlm_jax.checkpoint import load_model, param_shapes
from mvlm_jax.models import example_inputs
from mvlm_jax.sharding import path_of
from mvlm_jax.train.partition import merge, split
from mvlm_jax.train.step import init_optimizer_state

Params = dict[str, Any]
Keep = Callable[[str], bool]  # "/"-joined parameter path -> whether it is wanted


def parse_spec(spec: str) -> tuple[str, str]:
    """"llm=ckpt/sft" -> ("llm", "ckpt/sft"); "=ckpt/vlm1" (the whole model) -> ("", "ckpt/vlm1")."""
    part, _, directory = spec.partition("=")
    return part, directory


def _paths(tree: Any) -> dict[str, Any]:
    return {path_of(key_path): leaf for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_fits(spec: str, part: str, target: Params, stored: Params) -> None:
    """The checkpoint's parameters must be the target's, shape for shape; fresh LoRA adapters may be
    missing from a base checkpoint (they keep their random initialisation)."""
    shapes = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(target)}
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(stored)}
    missing = sorted(k for k in set(shapes) - set(got) if "lora_" not in k)
    extra = sorted(set(got) - set(shapes))
    wrong = sorted(k for k in set(shapes) & set(got) if shapes[k] != got[k])
    if missing or extra or wrong:
        raise ValueError(f"init_from {spec}: parameters do not fit config.model{('.' + part) if part else ''}: "
                         f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shape {wrong[:5]}")


def _prefixed(part: str, paths: Sequence[str]) -> set[str]:
    return {f"{part}/{path}" if part else path for path in paths}


def initial_params(specs: Sequence[str], abstract: Params, random_init: Callable[[Keep], Params]) -> Params:
    """The starting parameters, laid out as `abstract` (a tree of ShapeDtypeStructs with shardings).

    `specs`: config.init_from ("part=dir" or "=dir"); a later source overrides an earlier one where both
    hold a parameter. `random_init(keep)`: the freshly initialised leaves whose path `keep` accepts, already
    sharded; called once for the leaves no source covers, and not at all when the sources cover everything.
    """
    # (part, directory, target, full paths, whether the part is a subtree of the stored model)
    sources: list[tuple[str, str, Params, set[str], bool]] = []
    for spec in specs:
        part, directory = parse_spec(spec)
        if part and part not in abstract:
            raise ValueError(f"init_from {spec}: config.model has no part {part!r}; expected one of "
                             f"{sorted(abstract)} (or '=DIR' for the whole model)")
        target = abstract[part] if part else abstract
        stored = param_shapes(directory)
        # "vision=DIR" takes DIR's own vision/ when DIR holds a larger model (a classifier, another VLM)
        nested = bool(part) and hasattr(stored, "keys") and part in stored.keys() and part not in target
        stored = stored[part] if nested else stored
        _check_fits(spec, part, target, stored)
        sources.append((part, directory, target, _prefixed(part, _paths(stored)), nested))

    covered = set().union(*(source[3] for source in sources))
    params: Params = {}
    if set(_paths(abstract)) - covered:
        params = random_init(lambda path: path not in covered)
    for index, (part, directory, target, paths, nested) in enumerate(sources):
        # Only what no later source overrides: nothing is read twice.
        later = set().union(*(source[3] for source in sources[index + 1:]))
        wanted = paths - later
        prefix = f"{part}/" if part else ""
        restore_target = split(target, lambda path: f"{prefix}{path}" in wanted)[0]
        if restore_target:
            loaded, loaded_config = load_model(directory, target={part: restore_target} if nested else restore_target)
            loaded = loaded[part] if nested else loaded
            params = merge(params, {part: loaded} if part else loaded)
            print(f"initialised {part or 'the model'} from {directory} ({type(loaded_config).__name__})")
    return params


def _init_fn(run: Any) -> Callable[[jax.Array], Any]:
    return lambda key: run.model.init(key, *example_inputs(run.model_config))["params"]


def random_init_fn(run: Any, keep: Keep) -> Any:
    """jit(rng -> the kept leaves of model.init(rng)) for `run` (mvlm_jax.train.run.Run), each leaf in its
    sharding; call (or lower) it inside run.activate(). The values are those of a full initialisation (flax
    derives every parameter's key from its path), but only the kept leaves are computed."""
    return sharding.sharded_init(_init_fn(run), run.mesh, run.rules, select=lambda tree: split(tree, keep)[0])[0]


def random_init(run: Any, rng: jax.Array, keep: Keep) -> Params:
    """The kept leaves of model.init(rng), created sharded (sharding.init_sharded; see random_init_fn)."""
    return sharding.init_sharded(_init_fn(run), rng, run.mesh, run.rules, select=lambda tree: split(tree, keep)[0])[0]


def initial_state(init_from: Sequence[str], run: Any, rng: jax.Array) -> dict:
    """The train state at step 0 for `run` (mvlm_jax.train.run.Run), sharded as run.state_shardings."""
    abstract = merge(run.abstract_state["trainable"], run.abstract_state["frozen"])
    params = initial_params(init_from, abstract, lambda keep: random_init(run, rng, keep))
    trainable, frozen = split(params, run.trainable_of)
    # The parameters go into the state as they are; a jit over them all would only copy them.
    shardings = {key: run.state_shardings[key] for key in ("opt_state", "step", "rng")}
    rest = jax.jit(lambda t, key: init_optimizer_state(t, run.optimizer, key), out_shardings=shardings)(
        trainable, jax.random.fold_in(rng, 1))
    return {"trainable": trainable, "frozen": frozen, **rest}
