"""Restores that scale: init_from restores each source straight into the run's shardings (8 CPU devices,
conftest.py) and draws at random only what no source covers."""
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mvlm_jax import sharding
from mvlm_jax.checkpoint import save_model
from mvlm_jax.train.initial import initial_params, initial_state, random_init_fn
from mvlm_jax.train.partition import merge
from mvlm_jax.train.run import build_run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import pretrain, vlm  # noqa: E402


def abstract_params(run):
    return merge(run.abstract_state["trainable"], run.abstract_state["frozen"])


def random_source(directory, abstract, model_config, seed=0):
    """A model checkpoint of random values shaped like `abstract`; returns them (numpy)."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), abstract)
    save_model(directory, params, model_config)
    return params


def no_random_init(keep):
    raise AssertionError("the sources cover every parameter: nothing may be drawn at random")


def test_init_from_restores_into_the_target_shardings(tmp_path):
    config = pretrain.get_config("tiny")
    config.mesh.update(data=1, fsdp=4, tensor=2)
    run = build_run(config)
    abstract = abstract_params(run)
    source = random_source(tmp_path / "src", abstract, run.model_config)

    params = initial_params((f"={tmp_path / 'src'}",), abstract, no_random_init)
    restored, targets, expected = (dict(jax.tree_util.tree_flatten_with_path(t)[0])
                                   for t in (params, abstract, source))
    assert restored.keys() == targets.keys()
    for path, array in restored.items():
        assert array.sharding == targets[path].sharding, path
        np.testing.assert_array_equal(np.asarray(array), expected[path])
    # each device holds its slice only: the [vocab, embed] table is split 2 x 4
    embedding = params["embed_tokens"]["embedding"]
    assert {shard.data.shape for shard in embedding.addressable_shards} == {(256, 16)}


def test_random_init_covers_only_what_no_source_holds(tmp_path):
    config = vlm.get_config("size=tiny,stage=1")
    config.mesh.update(data=2, fsdp=2, tensor=2)
    run = build_run(config)
    abstract = abstract_params(run)
    llm = random_source(tmp_path / "llm", abstract["llm"], run.model_config.llm)
    bad = dict(abstract["llm"], lm_head={"kernel": jax.ShapeDtypeStruct((3, 5), np.float32)})
    random_source(tmp_path / "bad", bad, run.model_config.llm)

    asked = []

    def random_init(keep):
        asked.append(keep)
        with sharding.activate(run.mesh):
            return random_init_fn(run.model, run.model_config, run.param_shardings, keep)(jax.random.key(0))

    params = initial_params((f"llm={tmp_path / 'llm'}",), abstract, random_init)
    (keep,) = asked
    paths = [sharding.path_of(k) for k, _ in jax.tree_util.tree_leaves_with_path(abstract)]
    assert {p for p in paths if keep(p)} == {p for p in paths if not p.startswith("llm/")}
    for a, b in zip(jax.tree.leaves(params["llm"]), jax.tree.leaves(llm)):
        np.testing.assert_array_equal(np.asarray(a), b)
    for a, s in zip(jax.tree.leaves(params), jax.tree.leaves(abstract)):
        assert a.sharding == s.sharding
    # The drawn parts are those of a full initialisation, but the compiled program computes them only:
    # its outputs are the uncovered bytes, and its scratch space holds less than the covered LLM.
    with sharding.activate(run.mesh):
        full = random_init_fn(run.model, run.model_config, run.param_shardings, lambda p: True)(jax.random.key(0))
        memory = random_init_fn(run.model, run.model_config, run.param_shardings, keep).lower(
            jax.random.key(0)).compile().memory_analysis()
    for part in ("vision", "projector"):
        for a, b in zip(jax.tree.leaves(params[part]), jax.tree.leaves(full[part])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    per_device = lambda tree: sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    uncovered = {k: full[k] for k in ("vision", "projector")}
    alignment = 64 * len(jax.tree.leaves(uncovered))  # XLA pads each output buffer
    assert per_device(uncovered) <= memory.output_size_in_bytes <= per_device(uncovered) + alignment
    assert memory.temp_size_in_bytes < per_device(full["llm"]), (memory, per_device(full["llm"]))

    # The whole state from a run's view, and the refusals kept from before.
    state = initial_state((f"llm={tmp_path / 'llm'}",), run, jax.random.key(0))
    assert jax.tree.structure(state) == jax.tree.structure(run.abstract_state)
    with pytest.raises(ValueError, match=r"do not fit config.model.llm: .*wrong shape \[\"\['lm_head'\]"):
        initial_params((f"llm={tmp_path / 'bad'}",), abstract, no_random_init)
    with pytest.raises(ValueError, match="config.model has no part 'lmm'"):
        initial_params((f"lmm={tmp_path / 'llm'}",), abstract, no_random_init)
