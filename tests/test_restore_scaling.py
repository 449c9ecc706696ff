"""Restores that scale: init_from restores each source straight into the run's shardings (8 CPU devices,
conftest.py) and draws at random only what no source covers; the frozen parameters are written once per
run to WORKDIR/frozen, never into a step checkpoint, resume exactly, and a missing or damaged copy stops
the run with its path."""
import sys
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mvlm_jax import sharding
from mvlm_jax.checkpoint import load_model, save_model
from mvlm_jax.train.checkpoints import TrainCheckpoints
from mvlm_jax.train.frozen_copy import FrozenCopyError
from mvlm_jax.train.hooks import Hook
from mvlm_jax.train.initial import initial_params, initial_state, random_init_fn
from mvlm_jax.train.entry import train
from mvlm_jax.train.partition import merge
from mvlm_jax.train.experiment import parse
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
    run = build_run(parse(config))
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
    run = build_run(parse(config))
    abstract = abstract_params(run)
    llm = random_source(tmp_path / "llm", abstract["llm"], run.model_config.llm)
    bad = dict(abstract["llm"], lm_head={"kernel": jax.ShapeDtypeStruct((3, 5), np.float32)})
    random_source(tmp_path / "bad", bad, run.model_config.llm)

    asked = []

    def random_init(keep):
        asked.append(keep)
        with sharding.activate(run.mesh):
            return random_init_fn(run, keep)(jax.random.key(0))

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
        full = random_init_fn(run, lambda p: True)(jax.random.key(0))
        memory = random_init_fn(run, keep).lower(
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


from tests.test_train_eval import Interrupted, data  # noqa: E402,F401 - the embedded data fixture, shared


def frozen_layers_config(data):
    """Tiny pretraining with the decoder layers frozen: 6 steps, a checkpoint every 2."""
    root, paths = data
    config = pretrain.get_config("tiny")
    with config.unlocked():
        config.data.shards = (paths["shards"],)
    config.data.embedded.root = str(root)
    config.data.seq_len = 64
    config.train.update(total_steps=6, frozen=("^layers/",))
    config.checkpoint.every = 2
    config.eval.every = 0
    return config


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run: (its metrics records, its workdir)."""
    workdir = tmp_path_factory.mktemp("reference")
    return train(frozen_layers_config(data), str(workdir)), workdir


def stop_at(step):
    def stop(context):
        if context.step == step:
            raise Interrupted
    return Hook("stop", 1, stop, at_last=False)


def state_tree(step_dir: Path) -> str:
    """The tree of a step checkpoint's state item as orbax recorded it (its _METADATA)."""
    return (step_dir / "state" / "_METADATA").read_text()


def test_frozen_params_are_written_once_and_resume_exactly(data, reference, tmp_path):
    reference, reference_dir = reference
    frozen_dir = tmp_path / "run" / "frozen"
    stamp = frozen_dir / "_CHECKPOINT_METADATA"
    stamps = {}

    def watch(context):  # runs before the step's checkpoint; stops the run after step 5
        stamps[context.step] = stamp.stat().st_mtime_ns if stamp.exists() else None
        if context.step == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(frozen_layers_config(data), str(tmp_path / "run"), hooks=[Hook("watch", 1, watch, at_last=False)])
    assert stamps[1] is None and stamps[2] is None  # written at the first checkpoint, step 2
    assert stamps[3] is not None and stamps[3] == stamps[5]  # and not again at step 4
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]
    for step in steps:
        tree = state_tree(tmp_path / "run" / "checkpoints" / str(step))
        assert "trainable" in tree and "opt_state" in tree and "frozen" not in tree
    assert "layers" in (frozen_dir / "params" / "_METADATA").read_text()

    resumed = train(frozen_layers_config(data), str(tmp_path / "run"))
    assert [r["step"] for r in resumed] == [5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference[4:]]
    assert stamp.stat().st_mtime_ns == stamps[3]  # a resume only reads it
    assert "frozen" not in state_tree(tmp_path / "run" / "checkpoints" / "6")
    final, _ = load_model(tmp_path / "run" / "model")  # the exported model holds every parameter
    expected, _ = load_model(reference_dir / "model")
    assert jax.tree.structure(final) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)

    # A missing copy, then a damaged one: the run stops and names it (no fallback: every step needs it).
    frozen_dir.rename(tmp_path / "moved")
    with pytest.raises(FrozenCopyError, match=f"{frozen_dir}: missing"):
        train(frozen_layers_config(data), str(tmp_path / "run"))
    (tmp_path / "moved").rename(frozen_dir)
    victim = max((p for p in (frozen_dir / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    content = bytearray(victim.read_bytes())
    content[len(content) // 2] ^= 0xFF
    victim.write_bytes(bytes(content))
    with pytest.raises(FrozenCopyError, match=f"{frozen_dir}: damaged"):  # read fine: the checksum tells
        train(frozen_layers_config(data), str(tmp_path / "run"))


def test_a_checkpoint_from_before_the_frozen_copy_still_resumes(data, reference, monkeypatch, tmp_path):
    """Checkpoints written before WORKDIR/frozen existed hold the frozen params in their state: they resume
    from there, and the run's first save writes the copy."""
    def old_save(self, step, state, data_stream, metadata):
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_stream),
            metadata=ocp.args.JsonSave(metadata)), force=True)

    with monkeypatch.context() as patch:
        patch.setattr(TrainCheckpoints, "save", old_save)
        with pytest.raises(Interrupted):
            train(frozen_layers_config(data), str(tmp_path), hooks=[stop_at(3)])
    assert "frozen" in state_tree(tmp_path / "checkpoints" / "2") and not (tmp_path / "frozen").exists()
    resumed = train(frozen_layers_config(data), str(tmp_path))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference[0][2:]]
    assert (tmp_path / "frozen").is_dir() and "frozen" not in state_tree(tmp_path / "checkpoints" / "4")
