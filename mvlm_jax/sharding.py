"""Device mesh and the one table that maps logical axis names to mesh axes.

Models name every parameter axis and constrain activations at block boundaries with logical names;
this table decides the parallelism. `LOGICAL_RULES` is the default of `config.mesh.rules`: an experiment
changes a rule (or the mesh shape) in its config, not in a model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding

from data_pipelines.errors import BadInput

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes, or None = replicated): 8 names of parameter axes, then 5 of activations.
# When two axes of one array map to the same mesh axis, the earlier rule gets it (flax's priority order).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("vocab", "tensor"),        # embedding rows and LM-head columns
    ("embed", "fsdp"),          # model width of every weight matrix: ZeRO-3 style sharding
    ("heads", "tensor"),        # query heads * head_dim (Megatron column/row parallel attention)
    ("kv_heads", "tensor"),     # key/value heads * head_dim
    ("mlp", "tensor"),          # MLP hidden width
    ("layers", None),           # the nn.scan layer axis
    ("lora_rank", None),
    ("norm", None),             # norm scales and biases, class embedding: small, replicated
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
)


Rules = tuple[tuple[str, Any], ...]


def rules_from_config(table: Mapping[str, Any], where: str = "config.mesh.rules") -> Rules:
    """`config.mesh.rules` ({logical name: tuple of mesh axes, () = replicated}) as a flax rules table: a
    one-axis tuple becomes that axis, () becomes None. Names keep LOGICAL_RULES' order (a ConfigDict sorts
    its keys), names it lacks follow in sorted order. A mesh axis other than data / fsdp / tensor is an error."""
    order = [name for name, _ in LOGICAL_RULES if name in table] + sorted(set(table) - dict(LOGICAL_RULES).keys())
    rules = []
    for name in order:
        axes = table[name]
        axes = tuple(axes) if isinstance(axes, (tuple, list)) else (() if axes is None else (axes,))
        unknown = [axis for axis in axes if axis not in MESH_AXES]
        if unknown:
            raise ValueError(f"{where}.{name}: {table[name]!r} names no mesh axis {unknown}; expected a tuple of "
                             f"{MESH_AXES} (() = replicated)")
        rules.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
    return tuple(rules)


def rules_as_config(rules: Rules = LOGICAL_RULES) -> dict[str, tuple[str, ...]]:
    """A rules table as the value of `config.mesh.rules`: every value a tuple (one type per key, so that a
    command-line override such as --config.mesh.rules.embed="('fsdp','tensor')" type-checks)."""
    return {name: () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes) for name, axes in rules}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape (one axis may be -1 to take the remaining devices) and the logical-axis rules."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: Rules = LOGICAL_RULES

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) sizes on `num_devices` devices; an impossible shape is a BadInput naming
        config.mesh."""
        sizes = [self.data, self.fsdp, self.tensor]
        shape = dict(zip(MESH_AXES, sizes))
        fix = "set config.mesh (--config.mesh.AXIS=N; one axis -1 takes the remaining devices)"
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise BadInput(f"mesh {shape}: sizes must be positive, at most one -1; {fix}")
        known = math.prod(s for s in sizes if s != -1)
        if num_devices % known:
            raise BadInput(f"mesh {shape} does not divide the {num_devices} devices present; {fix}")
        sizes = [num_devices // known if s == -1 else s for s in sizes]
        if math.prod(sizes) != num_devices:
            raise BadInput(f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, "
                           f"but {num_devices} are present; {fix}")
        return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh with axes (data, fsdp, tensor), Auto axis types so that logical constraints apply."""
    devices = list(devices if devices is not None else jax.devices())
    shape = config.resolve(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_specs(boxed_params: Any) -> Any:
    """Tree of PartitionSpecs holding logical names, from boxed (nn.LogicallyPartitioned) params."""
    return nn.get_partition_spec(boxed_params)


def mesh_shardings(specs: Any, mesh: Mesh, rules: Sequence = LOGICAL_RULES) -> Any:
    """Logical PartitionSpecs -> NamedShardings on `mesh` through the rules table."""
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules: Sequence = LOGICAL_RULES) -> NamedSharding:
    """Sharding for [batch, ...] inputs: the batch axis over the mesh axes that 'batch' maps to."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence = LOGICAL_RULES) -> Iterator[None]:
    """Scope in which models trace with `mesh` and the rules (for their activation constraints)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def abstract_sharded(init_fn: Callable[[jax.Array], Any], mesh: Mesh,
                     rules: Sequence = LOGICAL_RULES) -> tuple[Any, Any]:
    """(unboxed ShapeDtypeStructs, NamedShardings) of the parameters `init_fn(rng)` would create (boxed
    params), without computing them: eval_shape, shardings from the table."""
    boxed = jax.eval_shape(init_fn, jax.random.key(0))
    # Unboxed without the logical constraint nn.unbox applies, which fails on ShapeDtypeStructs when called
    # inside activate().
    unboxed = jax.tree.map(lambda leaf: leaf.unbox(apply_constraint=False) if isinstance(leaf, nn.meta.AxisMetadata)
                           else leaf, boxed, is_leaf=lambda leaf: isinstance(leaf, nn.meta.AxisMetadata))
    return unboxed, mesh_shardings(logical_specs(boxed), mesh, rules)


def sharded_init(init_fn: Callable[[jax.Array], Any], mesh: Mesh, rules: Sequence = LOGICAL_RULES,
                 select: Callable[[Any], Any] = lambda tree: tree) -> tuple[Any, Any]:
    """(jit(rng -> select(unboxed init_fn(rng))), its out_shardings from the table); call or lower it inside
    activate(mesh, rules). `init_fn(rng)` returns boxed params; `select(tree)` picks the sub-tree to create
    (XLA drops the generators of the rest)."""
    shardings = select(abstract_sharded(init_fn, mesh, rules)[1])
    return jax.jit(lambda key: select(nn.unbox(init_fn(key))), out_shardings=shardings), shardings


def init_sharded(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh, rules: Sequence = LOGICAL_RULES,
                 select: Callable[[Any], Any] = lambda tree: tree) -> tuple[Any, Any]:
    """Create parameters already sharded: eval_shape, shardings from the table, jitted init with those
    out_shardings (sharded_init). Returns (unboxed params, their shardings)."""
    init, shardings = sharded_init(init_fn, mesh, rules, select)
    with activate(mesh, rules):
        return init(rng), shardings


def path_of(key_path) -> str:
    """A jax key path as "llm/layers/attn/q_proj/kernel" (the form path patterns and logs use)."""
    return "/".join(str(getattr(k, "key", k)) for k in key_path)


def spec_table(shardings: Any) -> dict[str, str]:
    """'path/to/param' -> PartitionSpec text, for logs and plans."""
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {path_of(path): str(s.spec) for path, s in flat}

