"""On 8 fake CPU devices: the LLM and the VLM forward under jax.jit with in/out shardings on several
meshes equal the single-device outputs (f32, 1e-5), and every parameter is sharded as the table says."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from mvlm_jax import sharding
from mvlm_jax.models import build_model, example_inputs
from mvlm_jax.models.config import LLAMA_PRESETS, PROJECTOR_PRESETS, VISION_PRESETS, VLMConfig

MESHES = {
    "data": sharding.MeshConfig(data=8),
    "fsdp": sharding.MeshConfig(data=1, fsdp=8),
    "fsdp_x_tensor": sharding.MeshConfig(data=1, fsdp=4, tensor=2),
    "data_fsdp_tensor": sharding.MeshConfig(data=2, fsdp=2, tensor=2),
}
# The VLM runs on the mesh that uses all three axes at once (its own layouts: tower, projector, split
# along fsdp and tensor while rows split along data); the other meshes are the LLM's, and each VLM mesh
# costs half a minute of compiling.
MIXED_MESHES = ("data_fsdp_tensor",)
CONFIGS = {
    "llm": LLAMA_PRESETS["tiny"],
    "vlm": VLMConfig(VISION_PRESETS["tiny"], PROJECTOR_PRESETS["ldp"], LLAMA_PRESETS["tiny"]),
}


def batch_for(name, config):
    rng = np.random.default_rng(0)
    if name == "llm":
        tokens = rng.integers(0, config.vocab_size, (8, 16))
        segments = np.repeat([[1] * 10 + [2] * 6], 8, 0)  # two packed documents per row
        positions = np.concatenate([np.arange(10), np.arange(6)])[None].repeat(8, 0)
        return tuple(jnp.asarray(a, jnp.int32) for a in (tokens, segments, positions))
    tokens = jnp.asarray(rng.integers(0, config.llm.vocab_size, (8, config.num_visual_tokens + 6)), jnp.int32)
    images = jnp.asarray(rng.normal(size=(8, 1, 48, 48, 3)), jnp.float32)
    slots = jnp.asarray([[2]] * 6 + [[-1]] * 2, jnp.int32)  # a batch mixing rows with and without an image
    return tokens, images, slots


def expected_spec(logical: PartitionSpec) -> PartitionSpec:
    table = dict(sharding.LOGICAL_RULES)
    return PartitionSpec(*(None if name is None else table[name] for name in logical))


# Written out by hand, independently of the models' logical names: how each kind of weight must be laid out.
HAND_WRITTEN = {
    "llm": {
        "embed_tokens/embedding": ("tensor", "fsdp"),                 # [vocab, embed]
        "layers/attn/q_proj/kernel": (None, "fsdp", "tensor"),        # [layers, embed, heads]
        "layers/attn/k_proj/kernel": (None, "fsdp", "tensor"),
        "layers/attn/o_proj/kernel": (None, "tensor", "fsdp"),        # [layers, heads, embed]
        "layers/mlp/gate_proj/kernel": (None, "fsdp", "tensor"),      # [layers, embed, mlp]
        "layers/mlp/down_proj/kernel": (None, "tensor", "fsdp"),      # [layers, mlp, embed]
        "layers/input_norm/scale": (None, None),
        "final_norm/scale": (None,),
        "lm_head/kernel": ("fsdp", "tensor"),                         # [embed, vocab]
    },
    "vlm": {
        "vision/layers/attn_q_proj/kernel": (None, "fsdp", "tensor"),
        "vision/layers/attn_q_proj/bias": (None, "tensor"),
        "vision/layers/fc2/kernel": (None, "tensor", "fsdp"),
        "vision/position_embedding": (None, "fsdp"),
        "projector/mlp/fc1/kernel": ("fsdp", "tensor"),
        "projector/block_0/depthwise/kernel": (None, None, None, "fsdp"),
        "projector/block_1/pointwise/kernel": ("fsdp", "tensor"),
        "llm/layers/mlp/up_proj/kernel": (None, "fsdp", "tensor"),
    },
}


def test_hand_written_layouts_hold():
    mesh = sharding.make_mesh(MESHES["data_fsdp_tensor"])
    for name, expected in HAND_WRITTEN.items():
        config = CONFIGS[name]
        model = build_model(config)
        logical = sharding.logical_specs(jax.eval_shape(lambda k: model.init(k, *example_inputs(config))["params"],
                                                        jax.random.key(0)))
        described = sharding.spec_table(sharding.mesh_shardings(logical, mesh))
        for path, spec in expected.items():
            assert described[path] == str(PartitionSpec(*spec)), (name, path, described[path])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sharded_forward_equals_single_device(name):
    config = CONFIGS[name]
    model = build_model(config)
    init = lambda key: model.init(key, *example_inputs(config))["params"]  # noqa: E731
    single_params = nn.unbox(jax.jit(init)(jax.random.key(0)))  # one compile, not one per op
    batch = batch_for(name, config)
    reference = np.asarray(jax.jit(lambda p, *b: model.apply({"params": p}, *b))(single_params, *batch))

    for mesh_name in MESHES if name == "llm" else MIXED_MESHES:
        mesh = sharding.make_mesh(MESHES[mesh_name])
        params, shardings = sharding.init_sharded(init, jax.random.key(0), mesh)
        logical = sharding.logical_specs(jax.eval_shape(init, jax.random.key(0)))
        flat_params = jax.tree_util.tree_leaves_with_path(params)
        flat_logical = dict(jax.tree_util.tree_leaves_with_path(logical, is_leaf=lambda x: isinstance(x, PartitionSpec)))
        for path, leaf in flat_params:
            want = expected_spec(flat_logical[path])
            got = leaf.sharding.spec
            assert tuple(got) + (None,) * (len(want) - len(got)) == tuple(want), (mesh_name, path, got, want)
            assert leaf.sharding.mesh.shape == mesh.shape
        data = sharding.batch_sharding(mesh)
        with sharding.activate(mesh):
            forward = jax.jit(lambda p, *b: model.apply({"params": p}, *b),
                              in_shardings=(shardings,) + (data,) * len(batch), out_shardings=data)
            logits = forward(params, *batch)
        assert logits.sharding.spec == data.spec
        np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-5, rtol=0, err_msg=mesh_name)


def test_a_weight_is_actually_split_across_devices():
    mesh = sharding.make_mesh(MESHES["fsdp_x_tensor"])
    config = CONFIGS["llm"]
    model = build_model(config)
    params, _ = sharding.init_sharded(lambda k: model.init(k, *example_inputs(config))["params"], jax.random.key(0), mesh)
    q_proj = params["layers"]["attn"]["q_proj"]["kernel"]  # [layers, embed, heads] -> (None, fsdp, tensor)
    shard_shapes = {s.data.shape for s in q_proj.addressable_shards}
    assert shard_shapes == {(2, 64 // 4, 64 // 2)}


@pytest.mark.parametrize("mesh_config, message", [
    (sharding.MeshConfig(data=3), "does not divide"),
    (sharding.MeshConfig(data=-1, fsdp=-1), "at most one -1"),
    (sharding.MeshConfig(data=2, fsdp=2, tensor=1), "uses 4 devices"),
])
def test_bad_mesh_configs_are_rejected_clearly(mesh_config, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(mesh_config)


def test_a_rule_changed_in_the_config_changes_a_parameters_sharding():
    """config.mesh.rules is the table: replicating `vocab` there moves the embedding's and the LM head's
    vocabulary axis off `tensor`, and nothing else changes; a rule naming no mesh axis is refused by key."""
    from mvlm_jax.train.experiment import parse
    from mvlm_jax.train.recipes import base_config
    from mvlm_jax.train.run import build_run

    def layout(config):
        return sharding.spec_table(build_run(parse(config), jax.devices()[:1]).param_shardings)

    default = layout(base_config())
    config = base_config()
    config.mesh.rules.vocab = ()
    changed = layout(config)
    assert default["embed_tokens/embedding"] == str(PartitionSpec("tensor", "fsdp"))
    assert changed["embed_tokens/embedding"] == str(PartitionSpec(None, "fsdp"))
    assert changed["lm_head/kernel"] == str(PartitionSpec("fsdp", None))
    assert {k: v for k, v in changed.items() if "embed_tokens" not in k and "lm_head" not in k} == \
        {k: v for k, v in default.items() if "embed_tokens" not in k and "lm_head" not in k}
    config.mesh.rules.vocab = ("tensr",)
    with pytest.raises(ValueError, match=r"config\.mesh\.rules\.vocab"):
        parse(config)
