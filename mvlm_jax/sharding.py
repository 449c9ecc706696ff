"""Device mesh and the one table that maps logical axis names to mesh axes.

Models name every parameter axis and constrain activations at block boundaries with logical names;
this table decides the parallelism. Changing it (or the mesh shape) is a config change, not a model change.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding

from data_pipelines.errors import BadInput

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes, or None = replicated). Parameters: rows 1-9; activations: rows 10-14.
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


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape; one axis may be -1 to take the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) sizes on `num_devices` devices; an impossible shape is a BadInput naming
        config.mesh."""
        sizes = [self.data, self.fsdp, self.tensor]
        asked = dataclasses.asdict(self)
        fix = "set config.mesh (--config.mesh.AXIS=N; one axis -1 takes the remaining devices)"
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise BadInput(f"mesh {asked}: sizes must be positive, at most one -1; {fix}")
        known = math.prod(s for s in sizes if s != -1)
        if num_devices % known:
            raise BadInput(f"mesh {asked} does not divide the {num_devices} devices present; {fix}")
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


def init_sharded(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh,
                 rules: Sequence = LOGICAL_RULES) -> tuple[Any, Any]:
    """Create parameters already sharded: eval_shape, shardings from the table, jitted init with
    those out_shardings. `init_fn(rng)` returns boxed params. Returns (unboxed params, shardings)."""
    shardings = mesh_shardings(logical_specs(jax.eval_shape(init_fn, rng)), mesh, rules)
    with activate(mesh, rules):
        params = jax.jit(lambda key: nn.unbox(init_fn(key)), out_shardings=shardings)(rng)
    return params, shardings


def path_of(key_path) -> str:
    """A jax key path as "llm/layers/attn/q_proj/kernel" (the form path patterns and logs use)."""
    return "/".join(str(getattr(k, "key", k)) for k in key_path)


def describe(shardings: Any) -> dict[str, str]:
    """'path/to/param' -> PartitionSpec text, for logs and plans."""
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {path_of(path): str(s.spec) for path, s in flat}

